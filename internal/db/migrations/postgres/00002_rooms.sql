-- +goose Up
-- The global stream: one row whose position every persisted event (and
-- later every other stream item) takes the next value of, inside its own
-- transaction. The row lock orders commits, so positions become visible in
-- order and /sync never skips one.
CREATE TABLE stream_position (
    id   INTEGER PRIMARY KEY,
    pos  BIGINT NOT NULL
);
INSERT INTO stream_position (id, pos) VALUES (1, 0);

CREATE TABLE rooms (
    room_id         TEXT PRIMARY KEY,
    room_version    TEXT NOT NULL,
    created_ts      BIGINT NOT NULL,
    state_snapshot  BIGINT NOT NULL DEFAULT 0,
    published       BOOLEAN NOT NULL DEFAULT FALSE
);

-- Every event, stored once. status: 0 accepted, 1 rejected, 2 soft-failed,
-- 3 outlier (known but not part of the room's timeline).
CREATE TABLE events (
    nid               BIGSERIAL PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    room_id           TEXT NOT NULL,
    type              TEXT NOT NULL,
    state_key         TEXT,
    sender            TEXT NOT NULL,
    depth             BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL,
    stream_pos        BIGINT NOT NULL,
    state_before      BIGINT NOT NULL DEFAULT 0,
    status            SMALLINT NOT NULL DEFAULT 0,
    redacted_by       TEXT,
    relates_to        TEXT,
    rel_type          TEXT,
    txn_id            TEXT,
    json              TEXT NOT NULL
);
CREATE INDEX events_room_stream ON events (room_id, stream_pos);
CREATE INDEX events_stream ON events (stream_pos);
CREATE INDEX events_relates ON events (relates_to, rel_type);

CREATE TABLE forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State snapshots: a parent plus the entries that differ from it. A chain
-- is cut with a full snapshot (parent 0) every few deltas.
CREATE TABLE state_snapshots (
    snapshot_id  BIGSERIAL PRIMARY KEY,
    room_id      TEXT NOT NULL,
    parent       BIGINT NOT NULL DEFAULT 0,
    chain        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE state_entries (
    snapshot_id  BIGINT NOT NULL,
    type         TEXT NOT NULL,
    state_key    TEXT NOT NULL,
    event_nid    BIGINT NOT NULL,
    PRIMARY KEY (snapshot_id, type, state_key)
);

CREATE TABLE current_state (
    room_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_nid   BIGINT NOT NULL,
    membership  TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_members ON current_state (state_key, membership) WHERE type = 'm.room.member';

-- Client transaction IDs, scoped like the request path: per device and room.
CREATE TABLE transaction_ids (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id, txn_id)
);

CREATE TABLE room_aliases (
    alias    TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    creator  TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- +goose Down
DROP TABLE forgotten_rooms;
DROP TABLE room_aliases;
DROP TABLE transaction_ids;
DROP TABLE current_state;
DROP TABLE state_entries;
DROP TABLE state_snapshots;
DROP TABLE forward_extremities;
DROP TABLE events;
DROP TABLE rooms;
DROP TABLE stream_position;
