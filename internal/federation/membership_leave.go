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
// (the spec's format since v1.16) or, from older servers, stripped state
// events. A PDU must be of the room and verify; with strict set (room
// versions after 11) every entry must be such a PDU and the create event
// must be there, otherwise the error names the first problem. Without
// strict, entries that fail are left out and the first problem is
// returned along with the rest.
func (s *Service) roomStateSummary(ctx context.Context, ver gomatrixserverlib.RoomVersion, roomID string, entries []json.RawMessage, strict bool) ([]rooms.StrippedState, error) {
	var out []rooms.StrippedState
	var first error
	fail := func(err error) {
		if first == nil {
			first = err
		}
	}
	hasCreate := false
	for _, raw := range entries {
		var probe struct {
			Signatures json.RawMessage `json:"signatures"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			fail(fmt.Errorf("entry is not a JSON object: %w", err))
			continue
		}
		if probe.Signatures == nil {
			var st rooms.StrippedState
			if strict || json.Unmarshal(raw, &st) != nil || st.Type == "" {
				fail(fmt.Errorf("entry is not a PDU of room version %s", ver))
				continue
			}
			out = append(out, st)
			continue
		}
		pdu, err := s.VerifyPDU(ctx, ver, raw)
		switch {
		case err != nil:
			fail(fmt.Errorf("entry does not verify: %w", err))
			continue
		case pdu.RoomID().String() != roomID:
			fail(fmt.Errorf("event %s is of room %s", pdu.EventID(), pdu.RoomID().String()))
			continue
		case pdu.StateKey() == nil:
			fail(fmt.Errorf("event %s is not a state event", pdu.EventID()))
			continue
		}
		if pdu.Type() == spec.MRoomCreate && pdu.StateKeyEquals("") {
			hasCreate = true
		}
		out = append(out, rooms.StrippedState{Content: pdu.Content(), Sender: string(pdu.SenderID()), StateKey: *pdu.StateKey(), Type: pdu.Type()})
	}
	if strict && !hasCreate {
		fail(fmt.Errorf("the m.room.create event is missing"))
	}
	return out, first
}
