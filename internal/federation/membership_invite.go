package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Invites across servers: PUT /v2/invite both ways.

// inviteRequest is the body of PUT /v2/invite.
type inviteRequest struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

// strictRoomState reports whether an invite_room_state entry that fails
// the checks fails the invite (room versions after 11) rather than being
// left out: the spec lets servers relax the checks for versions 1 to 11
// while others migrate.
func strictRoomState(ver gomatrixserverlib.RoomVersion) bool {
	switch ver {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11:
		return false
	}
	return true
}

// handleInvite receives an invite of a local user (PUT /v2/invite): after
// the spec's checks — room version, event of the path, m.room.member with
// membership invite, sender on the origin server, invitee an active user
// of this server, origin's signature, invite_room_state — it signs the
// event, records the
// invite (in the room's graph when this server follows the room,
// out-of-band otherwise, for /sync) and returns it.
func (s *Service) handleInvite(r *http.Request, origin string) (any, error) {
	roomID, eventID, err := membershipPath(r, "eventId")
	if err != nil {
		return nil, err
	}
	var req inviteRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.RoomVersion == "" || len(req.Event) == 0 {
		return nil, httpx.MissingParam("room_version and event are required")
	}
	ver := gomatrixserverlib.RoomVersion(req.RoomVersion)
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil || !gomatrixserverlib.StableRoomVersion(ver) {
		return nil, incompatibleRoomVersion(ver)
	}
	ctx := r.Context()
	if known, err := s.rooms.RoomVersion(ctx, roomID); err == nil {
		if known != ver {
			return nil, httpx.InvalidParam("Room %s is of version %s, not %s", roomID, known, ver)
		}
		if ok, err := s.rooms.ServerAllowed(ctx, roomID, origin); err != nil {
			return nil, err
		} else if !ok {
			return nil, httpx.Forbidden("Server %s is denied by the room's server ACL", origin)
		}
	}
	pdu, err := parsePDU(verImpl, req.Event)
	if err != nil {
		return nil, httpx.BadJSON("%v", err)
	}
	if err := checkMembershipEvent(pdu, roomID, eventID, spec.Invite, origin); err != nil {
		return nil, err
	}
	if serverOfUser(*pdu.StateKey()) != s.serverName {
		return nil, httpx.InvalidParam("The invited user %s is not a user of this server", *pdu.StateKey())
	}
	if u, err := s.accounts.GetUser(ctx, *pdu.StateKey()); err != nil {
		return nil, err
	} else if u == nil || u.Deactivated {
		return nil, httpx.Forbidden("User %s cannot be invited: there is no such active user", *pdu.StateKey())
	}
	if err := s.verifySignedBy(ctx, verImpl, pdu, origin); err != nil {
		return nil, httpx.InvalidParam("The event is not signed by %s: %v", origin, err)
	}
	stripped, err := s.roomStateSummary(ctx, ver, roomID, req.InviteRoomState, strictRoomState(ver))
	if err != nil && strictRoomState(ver) {
		return nil, httpx.InvalidParam("Bad invite_room_state: %v", err)
	}
	signed := s.sign(pdu)
	if err := s.rooms.StoreRemoteInvite(ctx, signed, stripped); err != nil {
		return nil, err
	}
	return map[string]any{"event": json.RawMessage(signed.JSON())}, nil
}

// InviteRemote sends an invite built here to the invitee's server (PUT
// /v2/invite) with the room's stripped state, and returns the event it
// signed. It implements rooms.RemoteMembership.
func (s *Service) InviteRemote(ctx context.Context, invite gomatrixserverlib.PDU, inviteRoomState []gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	server := serverOfUser(*invite.StateKey())
	body := inviteRequest{RoomVersion: string(invite.Version()), Event: invite.JSON(), InviteRoomState: make([]json.RawMessage, len(inviteRoomState))}
	for i, p := range inviteRoomState {
		body.InviteRoomState[i] = p.JSON()
	}
	return handshake([]string{server}, "invite", func(server string) (gomatrixserverlib.PDU, error) {
		var resp struct {
			Event json.RawMessage `json:"event"`
		}
		uri := membershipURI("v2", "invite", invite.RoomID().String(), invite.EventID(), nil)
		if err := s.fed.Client.Do(ctx, server, http.MethodPut, uri, body, &resp); err != nil {
			return nil, err
		}
		signed, err := s.VerifyPDU(ctx, invite.Version(), resp.Event)
		if err != nil {
			return nil, fmt.Errorf("%s: the invite it returned does not verify: %w", server, err)
		}
		if signed.EventID() != invite.EventID() {
			return nil, fmt.Errorf("%s returned invite %s for %s", server, signed.EventID(), invite.EventID())
		}
		return signed, nil
	})
}
