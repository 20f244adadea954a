package rooms

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// The state before and after events of an ingest batch.

// stateBefore computes the state before ev; missing lists prev_events
// whose state is unknown.
func (x *ingestBatch) stateBefore(ctx context.Context, ev *Event) (*stateAt, []string, error) {
	if len(ev.PrevEventIDs()) == 0 && x.backfillsCreate(ev) {
		return &stateAt{m: StateMap{}, hasRef: true}, nil, nil // the empty state
	}
	if ids, ok := x.opts.stateBefore[ev.EventID()]; ok {
		m, err := x.stateFromIDs(ids)
		if err != nil {
			return nil, nil, err
		}
		return &stateAt{m: m}, nil, nil
	}
	var sets []*stateAt
	var missing []string
	for _, p := range ev.PrevEventIDs() {
		s, err := x.stateAfter(ctx, p)
		if err != nil {
			return nil, nil, err
		}
		if s == nil {
			missing = append(missing, p)
		} else if !slices.Contains(sets, s) {
			sets = append(sets, s)
		}
	}
	if len(missing) > 0 {
		return nil, missing, nil
	}
	if len(sets) == 0 {
		// A create event given again (known as an outlier, say): it fails
		// on its own, not the batch.
		return nil, nil, badStateError{errors.New("event has no prev_events")}
	}
	s, err := x.resolve(ctx, sets)
	return s, nil, err
}

// resolve resolves states, reusing one of them when the result equals it.
func (x *ingestBatch) resolve(ctx context.Context, sets []*stateAt) (*stateAt, error) {
	if len(sets) == 1 {
		return sets[0], nil
	}
	maps := make([]StateMap, len(sets))
	for i, s := range sets {
		maps[i] = s.m
	}
	m, err := x.resolveState(ctx, maps)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		if len(s.m) == len(m) && len(diffState(s.m, m)) == 0 {
			return s, nil
		}
	}
	return &stateAt{m: m, parent: sets[0], delta: diffState(sets[0].m, m)}, nil
}

// stateAfter returns the state after the event id, or nil when it is not
// known.
func (x *ingestBatch) stateAfter(ctx context.Context, id string) (*stateAt, error) {
	if it := x.byEventID[id]; it != nil && it.before != nil {
		return x.itemAfter(it), nil
	}
	if s, ok := x.storedAt[id]; ok {
		return s, nil
	}
	if s, ok := x.supplied[id]; ok {
		return s, nil
	}
	if _, inBatch := x.byEventID[id]; !inBatch {
		if err := x.loadIDs(ctx, []string{id}); err != nil {
			return nil, err
		}
		if ev := x.get(id); ev != nil && hasState(ev) && ev.NID > 0 {
			s, err := x.storedStateAfter(ctx, ev)
			x.storedAt[id] = s
			return s, err
		}
	}
	ids, ok := x.opts.prevState[id]
	if !ok {
		return nil, nil
	}
	m, err := x.stateFromIDs(ids)
	if err != nil {
		return nil, err
	}
	if ev := x.get(id); ev != nil && ev.IsState() && !isRejected(ev) {
		m[ev.Key()] = ev.NID
	}
	s := &stateAt{m: m}
	x.supplied[id] = s
	return s, nil
}

// storedStateAfter returns the state after a stored event.
func (x *ingestBatch) storedStateAfter(ctx context.Context, ev *Event) (*stateAt, error) {
	if len(x.ri.extremities) == 1 && x.ri.extremities[0] == ev.EventID() {
		return &stateAt{m: x.ri.state, ref: x.ri.snapshot, hasRef: true}, nil
	}
	m, err := x.e.loadSnapshot(ctx, ev.StateBefore)
	if err != nil {
		return nil, err
	}
	return applyEvent(&stateAt{m: m, ref: ev.StateBefore, hasRef: true}, ev), nil
}

// applyEvent returns the state after ev given the state before it: with ev
// in it if ev is a state event that was not rejected (soft-failed events
// count: they take part in state resolution).
func applyEvent(before *stateAt, ev *Event) *stateAt {
	if !ev.IsState() || isRejected(ev) || ev.Status == StatusOutlier {
		return before
	}
	m := before.m.Clone()
	m[ev.Key()] = ev.NID
	return &stateAt{m: m, parent: before, delta: StateMap{ev.Key(): ev.NID}}
}

// itemAfter returns the state after a batch event.
func (x *ingestBatch) itemAfter(it *ingestItem) *stateAt {
	if it.after == nil {
		it.after = applyEvent(it.before, it.ev)
	}
	return it.after
}

// badStateError is a problem of state supplied with the events: it fails
// the event it is for, not the batch.
type badStateError struct{ error }

// stateFromIDs builds a state map from event IDs; rejected events are left
// out.
func (x *ingestBatch) stateFromIDs(ids []string) (StateMap, error) {
	m := make(StateMap, len(ids))
	for _, id := range ids {
		ev := x.get(id)
		switch {
		case ev == nil:
			return nil, badStateError{fmt.Errorf("supplied state event %s is unknown", id)}
		case !ev.IsState():
			return nil, badStateError{fmt.Errorf("supplied state event %s has no state key", id)}
		case isRejected(ev):
			continue
		}
		if _, dup := m[ev.Key()]; dup {
			return nil, badStateError{fmt.Errorf("supplied state has two events for (%s, %s)", ev.Type(), *ev.StateKey())}
		}
		m[ev.Key()] = ev.NID
	}
	return m, nil
}

// advance updates the forward extremities and current state for an
// accepted event: its prev_events stop being extremities and it becomes
// one, unless a stored event already builds on it.
func (x *ingestBatch) advance(ctx context.Context, it *ingestItem) error {
	prevs := it.ev.PrevEventIDs()
	var ext []string
	for _, id := range x.ext {
		if !slices.Contains(prevs, id) {
			ext = append(ext, id)
		}
	}
	changed := len(ext) != len(x.ext)
	if !x.refd[it.ev.EventID()] {
		ext = append(ext, it.ev.EventID())
		changed = true
	}
	x.ext = ext
	switch {
	case !changed || len(ext) == 0:
		return nil
	case len(ext) == 1 && ext[0] == it.ev.EventID():
		x.cur = x.itemAfter(it)
		return nil
	}
	sets := make([]*stateAt, 0, len(ext))
	for _, id := range ext {
		s, err := x.stateAfter(ctx, id)
		if err != nil {
			return err
		}
		if s != nil && !slices.Contains(sets, s) {
			sets = append(sets, s)
		}
	}
	if len(sets) == 0 {
		return errors.New("no forward extremity has a known state")
	}
	cur, err := x.resolve(ctx, sets)
	if err != nil {
		return err
	}
	x.cur = cur
	return nil
}
