-- +goose Up
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    localpart      TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL DEFAULT '',
    is_admin       INTEGER NOT NULL DEFAULT 0,
    is_guest       INTEGER NOT NULL DEFAULT 0,
    deactivated    INTEGER NOT NULL DEFAULT 0,
    created_ts     INTEGER NOT NULL
);

CREATE TABLE profiles (
    user_id      TEXT PRIMARY KEY,
    displayname  TEXT,
    avatar_url   TEXT,
    fields       TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE devices (
    user_id          TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    display_name     TEXT,
    created_ts       INTEGER NOT NULL,
    last_seen_ts     INTEGER,
    last_seen_ip     TEXT,
    last_seen_agent  TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token_hash    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    created_ts    INTEGER NOT NULL,
    expires_ts    INTEGER NOT NULL DEFAULT 0,
    refresh_hash  TEXT
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    created_ts   INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE login_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_ts  INTEGER NOT NULL
);

CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL DEFAULT '',
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    updated_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);

CREATE TABLE filters (
    user_id    TEXT NOT NULL,
    filter_id  INTEGER NOT NULL,
    filter     TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  INTEGER,
    pending       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0,
    expiry_ts     INTEGER,
    created_ts    INTEGER NOT NULL
);

CREATE TABLE uia_sessions (
    session_id  TEXT PRIMARY KEY,
    created_ts  INTEGER NOT NULL,
    user_id     TEXT NOT NULL DEFAULT '',
    completed   TEXT NOT NULL DEFAULT '[]',
    data        TEXT NOT NULL DEFAULT '{}'
);

-- +goose Down
DROP TABLE uia_sessions;
DROP TABLE registration_tokens;
DROP TABLE filters;
DROP TABLE account_data;
DROP TABLE login_tokens;
DROP TABLE refresh_tokens;
DROP TABLE access_tokens;
DROP TABLE devices;
DROP TABLE profiles;
DROP TABLE users;
