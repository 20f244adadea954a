package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
)

// Leaves and knocks through another server (rejecting a remote invite,
// retracting or making a knock), and send_knock's answer.

// LeaveRemote leaves a room this server does not follow through the first
// of servers that accepts (make_leave, send_leave) and returns the leave
// event. It implements rooms.RemoteMembership.
func (s *Service) LeaveRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (gomatrixserverlib.PDU, error) {
	return handshake(servers, "leave", func(server string) (gomatrixserverlib.PDU, error) {
		leave, err := s.makeEvent(ctx, server, roomID, userID, spec.Leave, content)
		if err != nil {
			return nil, err
		}
		uri := membershipURI("v2", "send_leave", roomID, leave.EventID(), nil)
		if err := s.fed.Client.Do(ctx, server, http.MethodPut, uri, json.RawMessage(leave.JSON()), nil); err != nil {
			return nil, err
		}
		return leave, nil
	})
}

// knockResult is what a knock through one server yields.
type knockResult struct {
	knock    gomatrixserverlib.PDU
	stripped []rooms.StrippedState
}

// KnockRemote knocks on a room this server does not follow through the
// first of servers that accepts (make_knock, send_knock) and returns the
// knock event with the room's stripped state. It implements
// rooms.RemoteMembership.
func (s *Service) KnockRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (gomatrixserverlib.PDU, []rooms.StrippedState, error) {
	res, err := handshake(servers, "knock", func(server string) (knockResult, error) {
		knock, err := s.makeEvent(ctx, server, roomID, userID, spec.Knock, content)
		if err != nil {
			return knockResult{}, err
		}
		var resp struct {
			KnockRoomState []json.RawMessage `json:"knock_room_state"`
		}
		uri := membershipURI("v1", "send_knock", roomID, knock.EventID(), nil)
		if err := s.fed.Client.Do(ctx, server, http.MethodPut, uri, json.RawMessage(knock.JSON()), &resp); err != nil {
			return knockResult{}, err
		}
		stripped, err := s.roomStateSummary(ctx, knock.Version(), roomID, resp.KnockRoomState, false)
		if err != nil {
			// Entries that do not check out are dropped, not fatal: the
			// knock itself was accepted.
			slog.Info("federation: knock_room_state does not check out", "server", server, "room", roomID, "err", err)
		}
		return knockResult{knock: knock, stripped: stripped}, nil
	})
	return res.knock, res.stripped, err
}

// sendKnockAnswer is send_knock's answer: the room's stripped state as
// PDUs (knock_room_state).
func (s *Service) sendKnockAnswer(ctx context.Context, ev *rooms.Event) (any, error) {
	described, err := s.rooms.StrippedStateEvents(ctx, ev.RoomID().String())
	if err != nil {
		return nil, err
	}
	return map[string]any{"knock_room_state": pduJSON(described)}, nil
}

// roomStateSummary checks the invite_room_state or knock_room_state
// another server sent and returns it in stripped form. Entries may be PDUs
// (the spec's format since v1.16) or, from servers that have not migrated
// (Synapse and Complement still send them), stripped state events; a
// missing create event is tolerated for the same reason. A PDU must be of
// the room and verify: with strict set (room versions after 11) the first
// one that does not is an error; otherwise such entries are left out and
// the first problem is returned along with the rest.
func (s *Service) roomStateSummary(ctx context.Context, ver gomatrixserverlib.RoomVersion, roomID string, entries []json.RawMessage, strict bool) ([]rooms.StrippedState, error) {
	var out []rooms.StrippedState
	var first error
	for _, raw := range entries {
		st, err := s.strippedEntry(ctx, ver, roomID, raw)
		if err != nil {
			if strict {
				return nil, err
			}
			if first == nil {
				first = err
			}
			continue
		}
		out = append(out, st)
	}
	return out, first
}

// strippedEntry checks one entry of invite_room_state or knock_room_state:
// a stripped state event, or a PDU of the room that verifies.
func (s *Service) strippedEntry(ctx context.Context, ver gomatrixserverlib.RoomVersion, roomID string, raw json.RawMessage) (rooms.StrippedState, error) {
	var probe struct {
		Signatures json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return rooms.StrippedState{}, fmt.Errorf("entry is not a JSON object: %w", err)
	}
	if probe.Signatures == nil {
		var st rooms.StrippedState
		if json.Unmarshal(raw, &st) != nil || st.Type == "" {
			return rooms.StrippedState{}, fmt.Errorf("entry is neither a stripped state event nor a PDU")
		}
		return st, nil
	}
	pdu, err := s.VerifyPDU(ctx, ver, raw)
	switch {
	case err != nil:
		return rooms.StrippedState{}, fmt.Errorf("entry does not verify: %w", err)
	case pdu.RoomID().String() != roomID:
		return rooms.StrippedState{}, fmt.Errorf("event %s is of room %s", pdu.EventID(), pdu.RoomID().String())
	case pdu.StateKey() == nil:
		return rooms.StrippedState{}, fmt.Errorf("event %s is not a state event", pdu.EventID())
	}
	return rooms.StrippedState{Content: pdu.Content(), Sender: string(pdu.SenderID()), StateKey: *pdu.StateKey(), Type: pdu.Type()}, nil
}
