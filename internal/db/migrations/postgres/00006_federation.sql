-- +goose Up
-- Other servers' signing keys, as the key ring learned them (directly from
-- /_matrix/key/v2/server or through a notary). One row per key; key_json is
-- the server's own signed response the key came from, served again when
-- Palpo acts as a notary.
CREATE TABLE server_keys (
    server_name     TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    public_key      TEXT NOT NULL,              -- unpadded base64 ed25519 key
    expired_ts      BIGINT NOT NULL DEFAULT 0,  -- old_verify_keys expired_ts; 0 for a current key
    valid_until_ts  BIGINT NOT NULL,            -- valid_until_ts of the response
    fetched_ts      BIGINT NOT NULL,            -- when Palpo received the response
    key_json        TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- +goose Down
DROP TABLE server_keys;
