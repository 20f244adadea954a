-- +goose Up
-- User-defined push rules; priority orders each kind (higher first).
CREATE TABLE push_rules (
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    conditions  TEXT,
    pattern     TEXT,
    actions     TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A user's changes to server-default rules (NULL: the default).
CREATE TABLE push_rule_defaults (
    user_id  TEXT NOT NULL,
    rule_id  TEXT NOT NULL,
    enabled  BOOLEAN,
    actions  TEXT,
    PRIMARY KEY (user_id, rule_id)
);

-- The push evaluator's durable position: events after it are not yet
-- evaluated. It starts at the current position: history is not notified.
CREATE TABLE push_position (
    id   INTEGER PRIMARY KEY,
    pos  BIGINT NOT NULL
);
INSERT INTO push_position (id, pos) SELECT 1, pos FROM stream_position WHERE id = 1;

-- Notifying events, one row per user they notify (only those: counts of
-- everything else are not kept per event). thread_id is "main" or the
-- thread root.
CREATE TABLE push_notifications (
    user_id     TEXT NOT NULL,
    stream_pos  BIGINT NOT NULL,
    room_id     TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    highlight   BOOLEAN NOT NULL,
    actions     TEXT NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);
CREATE INDEX push_notifications_pos ON push_notifications (stream_pos);

-- Unread counters per user, room and thread since the user's read position.
CREATE TABLE push_counts (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    notifs      BIGINT NOT NULL,
    highlights  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- Read positions (stream positions of the events read up to) per room,
-- user and thread; thread "" is the unthreaded receipt.
CREATE TABLE push_read (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    stream_pos  BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, thread_id)
);

-- Which stream position the clock was at, for pruning old notifications.
CREATE TABLE push_prune_marks (
    ts          BIGINT NOT NULL,
    stream_pos  BIGINT NOT NULL
);

-- HTTP pushers. last_pos: stream position of the last notification
-- delivered.
CREATE TABLE pushers (
    user_id              TEXT NOT NULL,
    app_id               TEXT NOT NULL,
    pushkey              TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    app_display_name     TEXT NOT NULL,
    device_display_name  TEXT NOT NULL,
    profile_tag          TEXT NOT NULL DEFAULT '',
    lang                 TEXT NOT NULL,
    data                 TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    pushkey_ts           BIGINT NOT NULL,
    last_pos             BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_device ON pushers (user_id, device_id);
CREATE INDEX pushers_pushkey ON pushers (app_id, pushkey);

-- +goose Down
DROP TABLE pushers;
DROP TABLE push_prune_marks;
DROP TABLE push_read;
DROP TABLE push_counts;
DROP TABLE push_notifications;
DROP TABLE push_position;
DROP TABLE push_rule_defaults;
DROP TABLE push_rules;
