package rooms

import (
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Routes registers the room endpoints of the client-server API.
func (e *Engine) Routes(rt *httpx.Router) {
	rt.Authed("POST /_matrix/client/v3/createRoom", e.handleCreateRoom)
	e.eventRoutes(rt)
	e.membershipRoutes(rt)
	e.readRoutes(rt)      // messages.go: /messages, /context, /relations, /threads, /timestamp_to_event
	e.directoryRoutes(rt) // directory.go: aliases, room directory, publicRooms; upgrade.go
}

func (e *Engine) handleCreateRoom(r *http.Request, p *httpx.Principal) (any, error) {
	var req CreateRoomRequest
	if err := httpx.DecodeOptionalJSON(r, &req); err != nil {
		return nil, err
	}
	roomID, err := e.CreateRoom(r.Context(), p.UserID, &req)
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// roomIDParam validates the {roomId} path parameter.
func roomIDParam(r *http.Request) (string, error) {
	id := r.PathValue("roomId")
	if !validSigilID(id, '!') {
		return "", httpx.InvalidParam("Invalid room ID %q", id)
	}
	return id, nil
}

// validSigilID checks the grammar room and event IDs share: the sigil, a
// non-empty opaque part, at most 255 bytes and, for the IDs that name their
// server (rooms before version 12, events of versions 1 and 2), a valid
// server name after the first colon.
func validSigilID(id string, sigil byte) bool {
	if len(id) < 2 || len(id) > 255 || id[0] != sigil {
		return false
	}
	local, server, ok := strings.Cut(id[1:], ":")
	return !ok || (local != "" && config.ValidateServerName(server) == nil)
}

// userIDParam validates a user ID from a path or body.
func validUserID(id string) error {
	if _, err := spec.NewUserID(id, true); err != nil || len(id) > 255 {
		return httpx.InvalidParam("Invalid user ID %q", id)
	}
	return nil
}
