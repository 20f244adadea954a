-- +goose Up
-- Memberships of local users in rooms this server is not in: invites
-- received over federation (/invite), knocks sent through another server
-- (/send_knock) and their rejection or retraction (/send_leave, or a local
-- leave when no server could be reached). The room's own event graph is
-- unknown here, so the membership event and the stripped state the other
-- server sent are kept with it; /sync lists them (rooms.invite, .knock,
-- .leave) from this table until the user's membership in the room's own
-- state is newer. One row per user and room: the latest membership.
CREATE TABLE out_of_band_memberships (
    room_id         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    membership      TEXT NOT NULL,   -- invite, knock or leave
    room_version    TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_json      TEXT NOT NULL,   -- the membership event (PDU)
    stripped_state  TEXT NOT NULL,   -- JSON array of stripped state events
    servers         TEXT NOT NULL,   -- JSON array: servers to join or leave through
    stream_pos      BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX out_of_band_memberships_stream ON out_of_band_memberships (user_id, stream_pos);

-- +goose Down
DROP TABLE out_of_band_memberships;
