-- +goose Up
-- The media repository. Content lives in the media storage (data_dir/media),
-- addressed by the SHA-256 of its bytes: identical uploads share one file.
-- A row is written only after its content is durable, so a crash never leaves
-- a row pointing at a half-written file.
--
-- media: one row per mxc:// URI, local or cached from another server.
CREATE TABLE media (
    server_name     TEXT NOT NULL,              -- the mxc:// authority (this server for local media)
    media_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL DEFAULT '',   -- uploader of local media; '' for remote media and URL preview images
    content_type    TEXT NOT NULL DEFAULT '',
    filename        TEXT NOT NULL DEFAULT '',
    size_bytes      INTEGER NOT NULL DEFAULT 0,
    sha256          TEXT NOT NULL DEFAULT '',   -- hex; '' until the content is there
    image_format    TEXT NOT NULL DEFAULT '',   -- jpeg, png, gif or webp when the content is an image Palpo can thumbnail
    width           INTEGER NOT NULL DEFAULT 0, -- pixel size of images, from their header
    height          INTEGER NOT NULL DEFAULT 0,
    created_ts      INTEGER NOT NULL,           -- ID created (local) or content cached (remote)
    uploaded_ts     INTEGER NOT NULL DEFAULT 0, -- 0: created with /create, content not uploaded yet
    expires_ts      INTEGER NOT NULL DEFAULT 0, -- unused_expires_at of an ID waiting for its upload
    last_access_ts  INTEGER NOT NULL,
    quarantined     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_pending ON media (user_id, uploaded_ts, expires_ts);
CREATE INDEX media_last_access ON media (last_access_ts);

-- media_thumbnails: thumbnails made here (width and height are the
-- thumbnail's own size) or fetched from the media's server (width and height
-- are the size asked for).
CREATE TABLE media_thumbnails (
    server_name   TEXT NOT NULL,
    media_id      TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    method        TEXT NOT NULL,                -- crop or scale
    animated      INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- media_url_previews: cached answers of preview_url.
CREATE TABLE media_url_previews (
    url         TEXT PRIMARY KEY,
    og          TEXT NOT NULL,                  -- the JSON answer
    fetched_ts  INTEGER NOT NULL
);

-- +goose Down
DROP TABLE media_url_previews;
DROP TABLE media_thumbnails;
DROP TABLE media;
