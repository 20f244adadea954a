-- +goose Up
-- The federation sender's queue: what each destination server still has to
-- receive, in id order. kind 0 is a PDU (event_id of a stored event), kind 1
-- a durable EDU (edu_json). Rows are deleted only after the destination
-- answered the transaction carrying them with 200.
CREATE TABLE federation_queue (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    destination  TEXT NOT NULL,
    kind         INTEGER NOT NULL,
    event_id     TEXT,
    edu_json     TEXT
);
CREATE INDEX federation_queue_destination ON federation_queue (destination, kind, id);

-- How far the sender has read the global stream (local events, receipts,
-- presence) into the queue. It starts at the current position: history
-- from before the sender existed is not sent.
CREATE TABLE federation_sender_position (
    id   INTEGER PRIMARY KEY,
    pos  BIGINT NOT NULL
);
INSERT INTO federation_sender_position (id, pos) SELECT 1, pos FROM stream_position WHERE id = 1;

-- Transactions received from other servers, with the answer given, so that
-- a retried transaction is answered again instead of processed twice.
CREATE TABLE federation_inbound_txns (
    origin       TEXT NOT NULL,
    txn_id       TEXT NOT NULL,
    response     TEXT NOT NULL,
    received_ts  BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_ts ON federation_inbound_txns (received_ts);

-- OpenID tokens (POST /user/{userId}/openid/request_token), checked by
-- other servers through GET /_matrix/federation/v1/openid/userinfo.
CREATE TABLE openid_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_ts  BIGINT NOT NULL
);

-- +goose Down
DROP TABLE openid_tokens;
DROP TABLE federation_inbound_txns;
DROP TABLE federation_sender_position;
DROP TABLE federation_queue;
