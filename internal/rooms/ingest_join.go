package rooms

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Joining rooms of other servers: event templates (make_join) and the
// import of a send_join answer.

// EventTemplate returns the skeleton of an event for a user of another
// server, as make_join, make_leave and make_knock answer it: prev_events
// are the room's forward extremities, auth_events are chosen from the
// current state and depth follows the extremities. The other server adds
// origin_server_ts, hashes and its signature. Nothing is stored.
func (e *Engine) EventTemplate(ctx context.Context, roomID string, s EventSpec) (*gomatrixserverlib.ProtoEvent, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	content, err := marshalContent(s.Content)
	if err != nil {
		return nil, err
	}
	prev := ri.extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: s.Sender, RoomID: roomID, Type: s.Type, StateKey: s.StateKey,
		PrevEvents: slices.Clone(prev), Depth: ri.maxDepth + 1, Content: content, Redacts: s.Redacts,
		Version: ri.verImpl,
	}
	if s.Redacts != "" && redactsInContent(ri.verImpl) {
		pe.Content = withContentField(content, "redacts", s.Redacts)
	}
	provider, err := e.authProvider(ctx, ri, ri.state, nil, pe)
	if err != nil {
		return nil, err
	}
	eb := ri.verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		return nil, err
	}
	pe.AuthEvents = eb.AuthEvents
	return pe, nil
}

// ImportRoomState joins a room of another server from its /send_join
// answer: the state before the join and its auth chain are stored as
// outliers (after checking each against its auth events; rejected ones are
// left out of the state), the state becomes the room's, and the join event
// — checked against its auth events and that state — becomes the first
// event of the local timeline. The room is created if this server did not
// know it. Nothing is stored unless the join is accepted.
func (e *Engine) ImportRoomState(ctx context.Context, ver gomatrixserverlib.RoomVersion, state, authChain []gomatrixserverlib.PDU, join gomatrixserverlib.PDU) (*Event, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return nil, err
	}
	if join == nil || join.Type() != spec.MRoomMember {
		return nil, errors.New("import: the join event is not a membership event")
	}
	roomID := join.RoomID().String()
	var create gomatrixserverlib.PDU
	for _, p := range state {
		if p.Type() == spec.MRoomCreate && p.StateKeyEquals("") {
			create = p
		}
	}
	if create == nil {
		return nil, errors.New("import: the state has no create event")
	}
	if create.RoomID().String() != roomID {
		return nil, errors.New("import: the create event is of another room")
	}
	o := ingestOptions{outlierIDs: map[string]bool{}, stateBefore: map[string][]string{}, noSoftFail: map[string]bool{join.EventID(): true}}
	var pdus []gomatrixserverlib.PDU
	var stateIDs []string
	for _, p := range append(slices.Clone(authChain), state...) {
		if o.outlierIDs[p.EventID()] || p.EventID() == join.EventID() {
			continue
		}
		o.outlierIDs[p.EventID()] = true
		pdus = append(pdus, p)
	}
	for _, p := range state {
		stateIDs = append(stateIDs, p.EventID())
	}
	o.stateBefore[join.EventID()] = stateIDs
	pdus = append(pdus, join)

	unlock := e.lockRoom(roomID)
	defer unlock()
	ri, err := e.room(ctx, roomID)
	creating := errors.Is(err, ErrRoomNotFound)
	switch {
	case creating:
		ri = &roomInfo{id: roomID, version: ver, verImpl: verImpl, state: StateMap{}}
	case err != nil:
		return nil, err
	case ri.version != ver:
		return nil, fmt.Errorf("import: room %s is of version %s, not %s", roomID, ri.version, ver)
	}
	// Nothing is written unless the join is accepted.
	o.mustAccept = join.EventID()
	results, err := e.ingestLocked(ctx, ri, pdus, o, creating)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return results[len(results)-1].Event, nil
}
