package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
)

// Joins: send_join's answer (this server resident) and JoinRemote (this
// server joining).

// sendJoinResponse is the answer of PUT /v2/send_join. Partial-state joins
// (omit_members) are not offered: the state is always complete and
// members_omitted false.
type sendJoinResponse struct {
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event,omitempty"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room,omitempty"`
}

// sendJoinAnswer is send_join's answer for an accepted join: the state
// before it, the auth chain of that state and of the join, and the join as
// this server signed it.
func (s *Service) sendJoinAnswer(ctx context.Context, ev *rooms.Event) (any, error) {
	state, authChain, err := s.rooms.StateBefore(ctx, ev)
	if err != nil {
		return nil, err
	}
	servers, err := s.roomServers(ctx, ev.RoomID().String())
	if err != nil {
		return nil, err
	}
	resp := &sendJoinResponse{State: pduJSON(state), AuthChain: pduJSON(authChain), Event: ev.JSON(), ServersInRoom: []string{}}
	for srv := range servers {
		resp.ServersInRoom = append(resp.ServersInRoom, srv)
	}
	slices.Sort(resp.ServersInRoom)
	return resp, nil
}

// JoinRemote joins userID to a room this server does not follow, through
// the first of servers that accepts: make_join, then send_join with the
// event built and signed here, then the returned state and auth chain are
// checked (format, signatures; the import checks each event against its
// auth events) and become the room's state here. It implements
// rooms.RemoteMembership.
func (s *Service) JoinRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (*rooms.Event, error) {
	return handshake(servers, "join", func(server string) (*rooms.Event, error) {
		return s.joinThrough(ctx, server, roomID, userID, content)
	})
}

// joinThrough runs the join handshake with one server.
func (s *Service) joinThrough(ctx context.Context, server, roomID, userID string, content map[string]any) (*rooms.Event, error) {
	join, err := s.makeEvent(ctx, server, roomID, userID, spec.Join, content)
	if err != nil {
		return nil, err
	}
	var resp sendJoinResponse
	if err := s.fed.Client.Do(ctx, server, http.MethodPut, membershipURI("v2", "send_join", roomID, join.EventID(), nil), json.RawMessage(join.JSON()), &resp); err != nil {
		return nil, err
	}
	ver := join.Version()
	if len(resp.Event) > 0 {
		// The resident server's copy carries its signature (needed for
		// restricted joins); it must be the same event.
		signed, err := s.VerifyPDU(ctx, ver, resp.Event)
		if err != nil {
			return nil, fmt.Errorf("%s: the join event it returned does not verify: %w", server, err)
		}
		if signed.EventID() != join.EventID() {
			return nil, fmt.Errorf("%s returned join event %s for %s", server, signed.EventID(), join.EventID())
		}
		join = signed
	} else if err := s.verifyEventSignatures(ctx, gomatrixserverlib.MustGetRoomVersion(ver), join); err != nil {
		return nil, fmt.Errorf("%s: no signed join event returned: %w", server, err)
	}
	// Events that fail the checks are left out, as the spec says; the
	// import's auth checks decide about the rest.
	state := s.verifyRemotePDUs(ctx, roomID, ver, resp.State)
	authChain := s.verifyRemotePDUs(ctx, roomID, ver, withoutRepeats(resp.AuthChain, resp.State))
	state, authChain, err = s.withAuthEvents(ctx, state, authChain)
	if err != nil {
		return nil, err
	}
	ev, err := s.rooms.ImportRoomState(ctx, ver, state, authChain, join)
	if err != nil {
		return nil, fmt.Errorf("%s: importing the room: %w", server, err)
	}
	return ev, nil
}

// withoutRepeats returns the events of list that are not in seen, byte
// for byte: most of a send_join answer's auth chain is in its state too,
// and need not be checked twice.
func withoutRepeats(list, seen []json.RawMessage) []json.RawMessage {
	set := make(map[string]bool, len(seen))
	for _, raw := range seen {
		set[string(raw)] = true
	}
	out := make([]json.RawMessage, 0, len(list))
	for _, raw := range list {
		if !set[string(raw)] {
			out = append(out, raw)
		}
	}
	return out
}

// withAuthEvents leaves out of a send_join answer's state and auth chain
// the events whose auth events are neither in the answer (after the
// events that failed the checks were dropped) nor stored here: they could
// not be checked, and an unverifiable event must not block the join.
func (s *Service) withAuthEvents(ctx context.Context, state, authChain []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, []gomatrixserverlib.PDU, error) {
	have := map[string]bool{}
	for _, p := range append(slices.Clone(state), authChain...) {
		have[p.EventID()] = true
	}
	stored := map[string]bool{}
	available := func(id string) (bool, error) {
		if have[id] {
			return true, nil
		}
		known, checked := stored[id]
		if !checked {
			ev, err := s.rooms.EventByID(ctx, id)
			if err != nil {
				return false, err
			}
			known = ev != nil
			stored[id] = known
		}
		return known, nil
	}
	// Dropping an event can orphan others: repeat until nothing changes.
	for changed := true; changed; {
		changed = false
		for _, list := range [][]gomatrixserverlib.PDU{state, authChain} {
			for _, p := range list {
				if !have[p.EventID()] {
					continue
				}
				for _, a := range p.AuthEventIDs() {
					ok, err := available(a)
					if err != nil {
						return nil, nil, err
					}
					if !ok {
						delete(have, p.EventID())
						changed = true
						break
					}
				}
			}
		}
	}
	keep := func(list []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
		out := make([]gomatrixserverlib.PDU, 0, len(list))
		for _, p := range list {
			if have[p.EventID()] {
				out = append(out, p)
			}
		}
		return out
	}
	return keep(state), keep(authChain), nil
}

// sentByResident reports whether a local event is a join this server made
// through another server (make_join, send_join). The resident server sends
// such a join to the room's other servers, as the spec asks of it, so the
// sender leaves it out (Synapse does the same): it would reach the
// resident twice and the others after it. It is recognised as a local
// user's join when no local user was joined before it: a local join then
// is either such a remote join or the creator's join of a new room, which
// has no other server to send it to.
func (s *Service) sentByResident(ctx context.Context, ev *rooms.Event) (bool, error) {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || !s.isLocalUser(*ev.StateKey()) {
		return false, nil
	}
	if m, _ := ev.Membership(); m != spec.Join {
		return false, nil
	}
	before, err := s.rooms.StateAt(ctx, ev, false)
	if err != nil {
		return false, err
	}
	local := rooms.StateMap{}
	for k, nid := range before {
		if k.Type == spec.MRoomMember && s.isLocalUser(k.StateKey) {
			local[k] = nid
		}
	}
	members, err := s.rooms.RoomStateEvents(ctx, ev.RoomID().String(), local)
	if err != nil {
		return false, err
	}
	for _, m := range members {
		if mm, _ := m.Membership(); mm == spec.Join {
			return false, nil
		}
	}
	return true, nil
}
