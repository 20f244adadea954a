-- +goose Up
-- End-to-end encryption (internal/e2ee). The server stores public keys,
-- signatures, encrypted backups and to-device messages; it never sees a
-- private key or a plaintext.

-- Device identity keys as uploaded (canonical JSON, signatures included,
-- "unsigned" dropped).
CREATE TABLE e2ee_device_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys; id orders them by upload.
CREATE TABLE e2ee_one_time_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2ee_one_time_keys_claim ON e2ee_one_time_keys (user_id, device_id, algorithm, id);

-- The fallback key of each device and algorithm; used is set once
-- /keys/claim handed it out.
CREATE TABLE e2ee_fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: key_type is master, self_signing or user_signing.
CREATE TABLE e2ee_cross_signing_keys (
    user_id    TEXT NOT NULL,
    key_type   TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload: on a device key (key_id
-- is the device ID) or on a master key (key_id is its public key).
CREATE TABLE e2ee_key_signatures (
    user_id         TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    signer_user_id  TEXT NOT NULL,
    signer_key_id   TEXT NOT NULL,
    signature       TEXT NOT NULL,
    PRIMARY KEY (user_id, key_id, signer_user_id, signer_key_id)
);

-- Device-list changes: a user's device appeared, changed keys or was
-- deleted (device_id ''  for a cross-signing key change), at a position of
-- the global stream, so /sync and /keys/changes read them by token.
CREATE TABLE e2ee_device_list_changes (
    stream_pos  INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    PRIMARY KEY (stream_pos, user_id, device_id)
);
CREATE INDEX e2ee_device_list_changes_user ON e2ee_device_list_changes (user_id, stream_pos);

-- Room members starting (joined = 1) or stopping (0) to be joined, at a
-- stream position taken when the change was recorded: users who start or
-- stop sharing a room see each other in device_lists.
CREATE TABLE e2ee_membership_changes (
    stream_pos  INTEGER NOT NULL,
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    joined      INTEGER NOT NULL,
    PRIMARY KEY (stream_pos, room_id, user_id)
);

-- To-device messages waiting for a local device. delivered_pos is the
-- next_batch position of the last /sync response that carried the message;
-- it is deleted once the device syncs with a since token at or past it.
CREATE TABLE e2ee_to_device (
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    stream_pos     INTEGER NOT NULL,
    sender         TEXT NOT NULL,
    type           TEXT NOT NULL,
    content        TEXT NOT NULL,
    delivered_pos  INTEGER,
    PRIMARY KEY (user_id, device_id, stream_pos)
);

-- Transaction IDs of /sendToDevice requests, per sending device.
CREATE TABLE e2ee_to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- To-device messages for users of other servers, until the federation
-- sender hands them over: messages is {user: {device: content}}.
CREATE TABLE e2ee_to_device_outbox (
    destination  TEXT NOT NULL,
    stream_pos   INTEGER NOT NULL,
    sender       TEXT NOT NULL,
    type         TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    messages     TEXT NOT NULL,
    PRIMARY KEY (destination, stream_pos)
);

-- Server-side key backups. Versions are numbered per user and never reused:
-- a deleted version keeps its row (deleted = 1) and loses its keys.
CREATE TABLE e2ee_backup_versions (
    user_id    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    algorithm  TEXT NOT NULL,
    auth_data  TEXT NOT NULL,
    etag       INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2ee_backup_keys (
    user_id              TEXT NOT NULL,
    version              INTEGER NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  INTEGER NOT NULL,
    forwarded_count      INTEGER NOT NULL,
    is_verified          INTEGER NOT NULL,
    session_data         TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- Each user's dehydrated device (MSC3814): the device itself is a row of
-- devices; device_data is the client's encrypted pickle.
CREATE TABLE e2ee_dehydrated_devices (
    user_id      TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL,
    device_data  TEXT NOT NULL
);

-- +goose Down
DROP TABLE e2ee_dehydrated_devices;
DROP TABLE e2ee_backup_keys;
DROP TABLE e2ee_backup_versions;
DROP TABLE e2ee_to_device_outbox;
DROP TABLE e2ee_to_device_txns;
DROP TABLE e2ee_to_device;
DROP TABLE e2ee_membership_changes;
DROP TABLE e2ee_device_list_changes;
DROP TABLE e2ee_key_signatures;
DROP TABLE e2ee_cross_signing_keys;
DROP TABLE e2ee_fallback_keys;
DROP TABLE e2ee_one_time_keys;
DROP TABLE e2ee_device_keys;
