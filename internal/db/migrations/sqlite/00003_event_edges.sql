-- +goose Up
-- The prev_events edges of events received from other servers (and of
-- joins imported from them), outliers excepted: an event that arrives after
-- an event building on it (backfill, gap filling) is history, not a new
-- forward extremity.
CREATE TABLE event_edges (
    room_id        TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    prev_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (room_id, prev_event_id);

-- Why received events were rejected (events.status = 1).
CREATE TABLE event_rejections (
    event_id  TEXT PRIMARY KEY,
    room_id   TEXT NOT NULL,
    reason    TEXT NOT NULL
);

-- Redactions received before the event they redact; applied when it
-- arrives.
CREATE TABLE pending_redactions (
    redacts       TEXT NOT NULL,
    redaction_id  TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (redacts, redaction_id)
);

-- +goose Down
DROP TABLE pending_redactions;
DROP TABLE event_rejections;
DROP TABLE event_edges;
