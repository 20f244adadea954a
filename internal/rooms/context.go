package rooms

import (
	"context"
	"math"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// ContextResponse is the answer of GET /rooms/{roomId}/context/{eventId}.
type ContextResponse struct {
	Start        string        `json:"start"`
	End          string        `json:"end"`
	EventsBefore []ClientEvent `json:"events_before"`
	Event        ClientEvent   `json:"event"`
	EventsAfter  []ClientEvent `json:"events_after"`
	State        []ClientEvent `json:"state"`
}

// handleContext serves the events around an event. The limit is split as
// Synapse does: limit/2 before, the rest after. The filter applies to the
// events around and to the state, not to the event itself; state is the
// room's state after the last event returned.
func (e *Engine) handleContext(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	limit, err := parseLimit(q, "limit", defaultMessagesLimit, maxMessagesLimit)
	if err != nil {
		return nil, err
	}
	f, err := parseEventFilter(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	w, err := e.readWindow(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	rc := e.newReader(p, w)
	ev, err := rc.visibleEvent(ctx, r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	keep := rc.keepMatching(ctx, f)
	before, start, _, err := e.page(ctx, w.ri, timelinePager(w, true, ev.Pos-1, math.MinInt64, limit/2, keep))
	if err != nil {
		return nil, err
	}
	after, end, _, err := e.page(ctx, w.ri, timelinePager(w, false, ev.Pos, math.MaxInt64, limit-limit/2, keep))
	if err != nil {
		return nil, err
	}
	last := ev
	if len(after) > 0 {
		last = after[len(after)-1]
	}
	state, err := e.contextState(ctx, w.ri, last, f, append(append([]*Event{ev}, before...), after...))
	if err != nil {
		return nil, err
	}
	resp := &ContextResponse{Start: Token(start), End: Token(end)}
	all, err := rc.clientEvents(ctx, append(append([]*Event{ev}, before...), after...))
	if err != nil {
		return nil, err
	}
	resp.Event, resp.EventsBefore, resp.EventsAfter = all[0], all[1:1+len(before)], all[1+len(before):]
	if resp.State, err = e.ClientEvents(ctx, state, p.UserID, p.DeviceID); err != nil {
		return nil, err
	}
	return resp, nil
}

// visibleEvent loads an event of the reader's room that the user may see;
// 404 M_NOT_FOUND for unknown, rejected or invisible events and events of
// other rooms.
func (rc *reader) visibleEvent(ctx context.Context, eventID string) (*Event, error) {
	ev, err := rc.e.EventByID(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if ev == nil || ev.RoomID().String() != rc.w.ri.id {
		return nil, httpx.NotFound("Event not found")
	}
	if ok, err := rc.canSee(ctx, ev); err != nil {
		return nil, err
	} else if !ok {
		return nil, httpx.NotFound("Event not found")
	}
	return ev, nil
}

// contextState is the state after last that /context returns: with lazy
// loading, the member events of the senders of evs only; then filtered.
func (e *Engine) contextState(ctx context.Context, ri *roomInfo, last *Event, f *eventFilter, evs []*Event) ([]*Event, error) {
	state, err := e.StateAt(ctx, last, true)
	if err != nil {
		return nil, err
	}
	var members []*Event
	if f.LazyLoadMembers {
		if members, err = e.senderMembers(ctx, ri, state, evs); err != nil {
			return nil, err
		}
		nonMember := make(StateMap, len(state))
		for k, nid := range state {
			if k.Type != spec.MRoomMember {
				nonMember[k] = nid
			}
		}
		state = nonMember
	}
	all, err := e.StateEvents(ctx, ri.version, state)
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(all)+len(members))
	for _, ev := range append(all, members...) {
		if f.matches(ev) {
			out = append(out, ev)
		}
	}
	return out, nil
}
