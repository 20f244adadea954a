-- +goose Up
-- Account data changes take a stream position so /sync can send only what
-- changed.
ALTER TABLE account_data ADD COLUMN stream_pos INTEGER NOT NULL DEFAULT 0;
CREATE INDEX account_data_stream ON account_data (user_id, stream_pos);

-- A user's own membership events, for /sync's membership transitions.
CREATE INDEX events_member_target ON events (state_key, stream_pos) WHERE type = 'm.room.member';

-- The latest receipt of each type per user, room and thread.
CREATE TABLE receipts (
    room_id       TEXT NOT NULL,
    receipt_type  TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL DEFAULT '',
    event_id      TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    stream_pos    INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_pos);

CREATE TABLE presence (
    user_id           TEXT PRIMARY KEY,
    presence          TEXT NOT NULL,
    status_msg        TEXT,
    last_active_ts    INTEGER NOT NULL,
    currently_active  INTEGER NOT NULL DEFAULT 0,
    stream_pos        INTEGER NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_pos);

-- +goose Down
DROP TABLE presence;
DROP TABLE receipts;
DROP INDEX events_member_target;
DROP INDEX account_data_stream;
ALTER TABLE account_data DROP COLUMN stream_pos;
