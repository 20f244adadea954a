package federation

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Answering other servers' questions about a room's history: /event,
// /state, /state_ids, /event_auth, /backfill, /get_missing_events and
// /timestamp_to_event.
//
// Who may ask: the room's server ACL must allow the requesting server, and
// for everything but /event it must have a joined member in the room now.
// What it sees: an event is visible to a server when the room's history
// visibility at the event is shared or world_readable, or one of the
// server's users was joined (or invited, for "invited") at that point;
// other events are served redacted, so that the event graph stays whole
// without revealing their content.

// History limits.
const (
	maxBackfillLimit      = 100
	defaultMissingLimit   = 10
	maxMissingEventsLimit = 100
)

// pduTransaction is the answer of /event and /backfill.
type pduTransaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

func (s *Service) newPDUTransaction(pdus []json.RawMessage) *pduTransaction {
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	return &pduTransaction{Origin: s.serverName, OriginServerTS: time.Now().UnixMilli(), PDUs: pdus}
}

// checkRoomAccess answers 404 for an unknown room and 403 when the room's
// ACL denies origin or, if inRoom, origin has no joined member in it.
func (s *Service) checkRoomAccess(ctx context.Context, roomID, origin string, inRoom bool) error {
	if !strings.HasPrefix(roomID, "!") || len(roomID) > 255 {
		return httpx.InvalidParam("Invalid room ID %q", roomID)
	}
	allowed, err := s.rooms.ServerAllowed(ctx, roomID, origin)
	if errors.Is(err, rooms.ErrRoomNotFound) {
		return httpx.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return err
	}
	if !allowed {
		return httpx.Forbidden("The room's server ACL denies %s", origin)
	}
	if !inRoom {
		return nil
	}
	servers, err := s.roomServers(ctx, roomID)
	if err != nil {
		return err
	}
	if !servers[origin] {
		return httpx.Forbidden("%s is not in the room", origin)
	}
	return nil
}

// roomEvent loads an event of a room that may be served (not rejected):
// 404 otherwise.
func (s *Service) roomEvent(ctx context.Context, roomID, eventID string) (*rooms.Event, error) {
	ev, err := s.rooms.EventByID(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if ev == nil || ev.Status == rooms.StatusRejected || (roomID != "" && ev.RoomID().String() != roomID) {
		return nil, httpx.NotFound("Unknown event %s", eventID)
	}
	return ev, nil
}

func (s *Service) handleEvent(r *http.Request, origin string) (any, error) {
	ctx := r.Context()
	ev, err := s.roomEvent(ctx, "", r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	roomID := ev.RoomID().String()
	if err := s.checkRoomAccess(ctx, roomID, origin, false); err != nil {
		return nil, err
	}
	v, err := s.newServerView(ctx, roomID, origin)
	if err != nil {
		return nil, err
	}
	pdus, err := v.serve(ctx, []*rooms.Event{ev})
	if err != nil {
		return nil, err
	}
	return s.newPDUTransaction(pdus), nil
}

// stateAtParam reads the room and ?event_id of /state and /state_ids,
// checks access and returns the state before the event and its auth chain.
func (s *Service) stateAtParam(r *http.Request, origin string) (state, chain []*rooms.Event, err error) {
	ctx := r.Context()
	roomID, eventID := r.PathValue("roomId"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, httpx.MissingParam("event_id is required")
	}
	if err := s.checkRoomAccess(ctx, roomID, origin, true); err != nil {
		return nil, nil, err
	}
	ev, err := s.roomEvent(ctx, roomID, eventID)
	if err != nil {
		return nil, nil, err
	}
	if ev.Status == rooms.StatusOutlier || ev.StateBefore < 0 {
		return nil, nil, httpx.NotFound("The state at %s is not known", eventID)
	}
	m, err := s.rooms.StateAt(ctx, ev, false)
	if err != nil {
		return nil, nil, err
	}
	if state, err = s.rooms.RoomStateEvents(ctx, roomID, m); err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(state))
	for i, st := range state {
		ids[i] = st.EventID()
	}
	if chain, err = s.rooms.AuthChain(ctx, roomID, ids); err != nil {
		return nil, nil, err
	}
	return state, chain, nil
}

func (s *Service) handleState(r *http.Request, origin string) (any, error) {
	state, chain, err := s.stateAtParam(r, origin)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdus": pduJSON(state), "auth_chain": pduJSON(chain)}, nil
}

func (s *Service) handleStateIDs(r *http.Request, origin string) (any, error) {
	state, chain, err := s.stateAtParam(r, origin)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdu_ids": eventIDs(state), "auth_chain_ids": eventIDs(chain)}, nil
}

// eventIDs lists the IDs of events.
func eventIDs(evs []*rooms.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}

func (s *Service) handleEventAuth(r *http.Request, origin string) (any, error) {
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	if err := s.checkRoomAccess(ctx, roomID, origin, true); err != nil {
		return nil, err
	}
	ev, err := s.roomEvent(ctx, roomID, r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	chain, err := s.rooms.AuthChain(ctx, roomID, []string{ev.EventID()})
	if err != nil {
		return nil, err
	}
	return map[string]any{"auth_chain": pduJSON(chain)}, nil
}

func (s *Service) handleBackfill(r *http.Request, origin string) (any, error) {
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return nil, httpx.MissingParam("v is required")
	}
	if q.Get("limit") == "" {
		return nil, httpx.MissingParam("limit is required")
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit < 0 {
		return nil, httpx.InvalidParam("limit must be a non-negative integer")
	}
	limit = min(limit, maxBackfillLimit)
	if err := s.checkRoomAccess(ctx, roomID, origin, true); err != nil {
		return nil, err
	}
	evs, err := s.walkBack(ctx, roomID, from, nil, 0, limit, true)
	if err != nil {
		return nil, err
	}
	v, err := s.newServerView(ctx, roomID, origin)
	if err != nil {
		return nil, err
	}
	pdus, err := v.serve(ctx, evs)
	if err != nil {
		return nil, err
	}
	return s.newPDUTransaction(pdus), nil
}

func (s *Service) handleGetMissingEvents(r *http.Request, origin string) (any, error) {
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	var body struct {
		Limit          *int     `json:"limit"`
		MinDepth       int64    `json:"min_depth"`
		EarliestEvents []string `json:"earliest_events"`
		LatestEvents   []string `json:"latest_events"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.LatestEvents == nil || body.EarliestEvents == nil {
		return nil, httpx.BadJSON("earliest_events and latest_events are required")
	}
	limit := defaultMissingLimit
	if body.Limit != nil {
		limit = min(max(*body.Limit, 0), maxMissingEventsLimit)
	}
	if err := s.checkRoomAccess(ctx, roomID, origin, true); err != nil {
		return nil, err
	}
	evs, err := s.walkBack(ctx, roomID, body.LatestEvents, body.EarliestEvents, body.MinDepth, limit, false)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(evs, func(a, b *rooms.Event) int { return int(a.Depth() - b.Depth()) })
	v, err := s.newServerView(ctx, roomID, origin)
	if err != nil {
		return nil, err
	}
	pdus, err := v.serve(ctx, evs)
	if err != nil {
		return nil, err
	}
	return map[string]any{"events": pdus}, nil
}

// timestampCandidates bounds the events /timestamp_to_event examines for
// one the asking server may see.
const timestampCandidates = 50

func (s *Service) handleTimestampToEvent(r *http.Request, origin string) (any, error) {
	ctx := r.Context()
	roomID, q := r.PathValue("roomId"), r.URL.Query()
	if q.Get("ts") == "" {
		return nil, httpx.MissingParam("ts is required")
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return nil, httpx.InvalidParam("ts must be an integer")
	}
	var forward bool
	switch dir := q.Get("dir"); dir {
	case "f":
		forward = true
	case "b":
	case "":
		return nil, httpx.MissingParam("dir is required")
	default:
		return nil, httpx.InvalidParam("dir must be b or f, not %q", dir)
	}
	if err := s.checkRoomAccess(ctx, roomID, origin, true); err != nil {
		return nil, err
	}
	evs, err := s.rooms.EventsByTimestamp(ctx, roomID, ts, forward, timestampCandidates)
	if err != nil {
		return nil, err
	}
	v, err := s.newServerView(ctx, roomID, origin)
	if err != nil {
		return nil, err
	}
	for _, ev := range evs {
		if ok, err := v.canSee(ctx, ev); err != nil {
			return nil, err
		} else if ok {
			return map[string]any{"event_id": ev.EventID(), "origin_server_ts": int64(ev.OriginServerTS())}, nil
		}
	}
	word := "forward"
	if !forward {
		word = "backward"
	}
	return nil, httpx.NotFound("Unable to find event from %d in %s direction", ts, word)
}

// walkBack walks a room's event graph back from the events `from` through
// prev_events, deepest first, and returns up to limit stored events (not
// rejected, not outliers), skipping those of `stop` and not walking past
// them or below minDepth. includeFrom says whether the `from` events are
// returned themselves (/backfill) or only their ancestors
// (/get_missing_events).
func (s *Service) walkBack(ctx context.Context, roomID string, from, stop []string, minDepth int64, limit int, includeFrom bool) ([]*rooms.Event, error) {
	seen := map[string]bool{}
	for _, id := range stop {
		seen[id] = true
	}
	h := &depthHeap{}
	push := func(id string) error {
		if seen[id] {
			return nil
		}
		seen[id] = true
		ev, err := s.rooms.EventByID(ctx, id)
		if err != nil {
			return err
		}
		if ev == nil || ev.RoomID().String() != roomID || ev.Status == rooms.StatusRejected || ev.Status == rooms.StatusOutlier || ev.Depth() < minDepth {
			return nil
		}
		heap.Push(h, ev)
		return nil
	}
	for _, id := range from {
		if includeFrom {
			if err := push(id); err != nil {
				return nil, err
			}
			continue
		}
		ev, err := s.rooms.EventByID(ctx, id)
		if err != nil {
			return nil, err
		}
		if ev == nil || ev.RoomID().String() != roomID {
			continue
		}
		seen[id] = true
		for _, p := range ev.PrevEventIDs() {
			if err := push(p); err != nil {
				return nil, err
			}
		}
	}
	var out []*rooms.Event
	for h.Len() > 0 && len(out) < limit {
		ev := heap.Pop(h).(*rooms.Event)
		out = append(out, ev)
		for _, p := range ev.PrevEventIDs() {
			if err := push(p); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// depthHeap orders events deepest first (then by stream position).
type depthHeap []*rooms.Event

func (h depthHeap) Len() int { return len(h) }
func (h depthHeap) Less(i, j int) bool {
	if h[i].Depth() != h[j].Depth() {
		return h[i].Depth() > h[j].Depth()
	}
	return h[i].Pos > h[j].Pos
}
func (h depthHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *depthHeap) Push(x any)   { *h = append(*h, x.(*rooms.Event)) }
func (h *depthHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// serverView decides which events of a room a server may see.
type serverView struct {
	s       *Service
	origin  string
	roomID  string
	verImpl gomatrixserverlib.IRoomVersion
	cache   map[int64]bool // state snapshot → visible
}

func (s *Service) newServerView(ctx context.Context, roomID, origin string) (*serverView, error) {
	ver, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return nil, err
	}
	return &serverView{s: s, origin: origin, roomID: roomID, verImpl: verImpl, cache: map[int64]bool{}}, nil
}

// serve returns the events' JSON for the server: redacted where it may
// not see them.
func (v *serverView) serve(ctx context.Context, evs []*rooms.Event) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		ok, err := v.canSee(ctx, ev)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, ev.JSON())
			continue
		}
		red, err := rooms.RedactEventJSON(v.verImpl, ev.JSON())
		if err != nil {
			return nil, err
		}
		out = append(out, red)
	}
	return out, nil
}

// canSee reports whether the server may see ev, from the state after it
// (the room's current state for an event stored without one).
func (v *serverView) canSee(ctx context.Context, ev *rooms.Event) (bool, error) {
	var state rooms.StateMap
	var err error
	key := ev.StateBefore
	if ev.Status == rooms.StatusOutlier || ev.StateBefore < 0 {
		key = -1
		state, err = v.s.rooms.CurrentState(ctx, v.roomID)
	} else {
		if ok, cached := v.cache[key]; cached && !ev.IsState() {
			return ok, nil
		}
		state, err = v.s.rooms.StateAt(ctx, ev, true)
	}
	if err != nil {
		return false, err
	}
	visibility := rooms.VisShared
	var nids []int64
	if nid, ok := state[rooms.StateKey{Type: spec.MRoomHistoryVisibility}]; ok {
		nids = append(nids, nid)
	}
	for k, nid := range state {
		if k.Type == spec.MRoomMember && serverOfUser(k.StateKey) == v.origin {
			nids = append(nids, nid)
		}
	}
	evs, err := v.s.rooms.EventsByNID(ctx, v.verImpl.Version(), nids)
	if err != nil {
		return false, err
	}
	var joined, invited bool
	for _, st := range evs {
		if st.Type() == spec.MRoomHistoryVisibility {
			if hv, err := st.HistoryVisibility(); err == nil {
				visibility = string(hv)
			}
			continue
		}
		switch m, _ := st.Membership(); m {
		case spec.Join:
			joined = true
		case spec.Invite:
			invited = true
		}
	}
	ok := visibility == rooms.VisWorldReadable || visibility == rooms.VisShared || joined ||
		(visibility == rooms.VisInvited && invited)
	if !ev.IsState() {
		v.cache[key] = ok
	}
	return ok, nil
}
