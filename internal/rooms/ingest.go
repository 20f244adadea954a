package rooms

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
)

// Ingesting events from other servers.
//
// IngestEvents is the write path for events that arrive already signed:
// federation's /send, the state of a /send_join answer, backfill. The
// caller (the federation package) has checked format, signatures and
// hashes. For each event, in the order of the spec's "checks performed on
// receipt of a PDU":
//
//  1. auth against its own auth_events, which must all be known
//     (otherwise it is not stored and its result lists MissingAuth);
//  2. the state before it is computed from its prev_events (the state after
//     each, resolved with the room version's state resolution when they
//     differ); unknown prev_events make it a gap the caller must fill
//     (MissingPrevs, or WithPrevState with what /state_ids returns);
//  3. auth against that state → rejected;
//  4. auth against the room's current state → soft-failed.
//
// Accepted events take a stream position and become forward extremities;
// the room's current state becomes the resolution of the states at its
// forward extremities. Rejected, soft-failed and outlier events are stored
// too (so they are never fetched twice, and soft-failed ones can take part
// in later state resolution) but without a stream position: they are
// never part of the timeline and never served to clients.
//
// A batch is checked in memory first (only the room's lock is held), then
// written in one transaction, so the global stream position is held only
// for the writes.

// stateUnknown is the state_before of events stored without a known state
// (outliers, and rejected events whose prev_events were unknown).
const stateUnknown = -1

// ErrStateUnknown is returned when the state at an event is asked for but
// the event is stored without one (an outlier).
var ErrStateUnknown = errors.New("state at event is unknown")

// hasState reports whether the state before a stored event is known.
func hasState(ev *Event) bool { return ev.Status != StatusOutlier && ev.StateBefore != stateUnknown }

// IngestResult is the outcome for one event given to IngestEvents.
type IngestResult struct {
	EventID string
	// Stored is set when the event is stored (by this call or an earlier
	// one); Status is then its status: StatusAccepted, StatusRejected,
	// StatusSoftFailed or StatusOutlier.
	Stored bool
	Status int
	// Known is set when the event was already stored before this call and
	// nothing changed.
	Known bool
	// Err says why the event was rejected or soft-failed, or why it was
	// not stored.
	Err error
	// MissingAuth lists unknown auth_events (the event was not stored);
	// fetch them (/event_auth, /event) and ingest them first.
	MissingAuth []string
	// MissingPrevs lists unknown prev_events (the event was not stored);
	// fetch them (/get_missing_events) or supply the state after each with
	// WithPrevState.
	MissingPrevs []string
	// Event is the stored event.
	Event *Event
}

// Errors of IngestResult.Err for events that were not stored.
var (
	ErrMissingAuthEvents = errors.New("auth events unknown")
	ErrMissingPrevEvents = errors.New("prev events unknown")
)

// IngestOption changes how IngestEvents treats the events.
type IngestOption func(*ingestOptions)

type ingestOptions struct {
	outliers    bool
	outlierIDs  map[string]bool
	prevState   map[string][]string // prev event → state before it
	stateBefore map[string][]string // event → state before it
	noSoftFail  map[string]bool
	mustAccept  string // write nothing unless this event is accepted
}

// AsOutliers stores the events as outliers: checked against their auth
// events only, with no state, outside the timeline and the room's state.
// Use it for auth chains and state fetched to fill a gap.
func AsOutliers() IngestOption { return func(o *ingestOptions) { o.outliers = true } }

// WithPrevState supplies the state before a prev_event this server does
// not have with its state, as /state_ids returns it (event IDs, all of
// which must be stored, e.g. as outliers). If the prev_event itself is
// stored (e.g. as an outlier) and is a state event, the engine applies it
// on top to get the state after it.
func WithPrevState(prevEventID string, stateEventIDs []string) IngestOption {
	return func(o *ingestOptions) {
		if o.prevState == nil {
			o.prevState = map[string][]string{}
		}
		o.prevState[prevEventID] = stateEventIDs
	}
}

// ingestItem is an event of a batch being ingested.
type ingestItem struct {
	ev        *Event
	res       *IngestResult
	before    *stateAt // nil when unknown
	after     *stateAt
	reason    string
	deoutlier bool // the event is stored as an outlier: update the row
	planMark  int  // snapshot plans to store before this item
	outlier   bool
}

// stateAt is a state with its snapshot: stored (ref > 0, or 0 for the empty
// state), planned in this batch (ref < 0), or not planned yet (hasRef
// false; parent and delta say how to plan it).
type stateAt struct {
	m      StateMap
	ref    int64
	hasRef bool
	parent *stateAt
	delta  StateMap
}

// snapPlan is a snapshot to store in the batch's transaction.
type snapPlan struct {
	parent int64 // snapshot ref
	full   StateMap
	delta  StateMap
	id     int64 // assigned when stored
}

// pendingRedaction is a redaction whose target is not known yet.
type pendingRedaction struct{ target, redaction string }

// ingestBatch checks a batch of events in memory.
type ingestBatch struct {
	*eventSource
	opts      ingestOptions
	creating  bool
	items     []*ingestItem
	byEventID map[string]*ingestItem
	plans     []*snapPlan
	ext       []string // forward extremities as the batch goes
	cur       *stateAt // current state as the batch goes
	nextProv  int64
	storedAt  map[string]*stateAt // state after stored events
	supplied  map[string]*stateAt // state after prev events from WithPrevState
	refd      map[string]bool     // batch events referenced by stored accepted events
	pending   map[string][]string // target → stored redactions waiting for it
	newPend   []pendingRedaction
	dbRedacts []dbRedaction
	known     map[string]*Event // batch events already stored before
	rejReason map[string]string // reasons of known rejected events
}

// dbRedaction is a stored event to redact in the transaction.
type dbRedaction struct {
	target    *Event // as stored
	redaction string
}

// IngestEvents checks and stores events of a room received from other
// servers (see the comment at the top of this file). It returns one result
// per event, in the order given; an error only when the room is unknown or
// the database fails. Events already stored are skipped, except that an
// outlier given again without AsOutliers joins the timeline.
func (e *Engine) IngestEvents(ctx context.Context, roomID string, pdus []gomatrixserverlib.PDU, opts ...IngestOption) ([]IngestResult, error) {
	var o ingestOptions
	for _, f := range opts {
		f(&o)
	}
	unlock := e.lockRoom(roomID)
	defer unlock()
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return e.ingestLocked(ctx, ri, pdus, o, false)
}

// ingestLocked runs a batch with the room lock held; creating is set when
// the room is new (ImportRoomState) and ri is blank.
func (e *Engine) ingestLocked(ctx context.Context, ri *roomInfo, pdus []gomatrixserverlib.PDU, o ingestOptions, creating bool) ([]IngestResult, error) {
	x := &ingestBatch{
		eventSource: e.newEventSource(ri), opts: o, creating: creating,
		byEventID: map[string]*ingestItem{}, ext: slices.Clone(ri.extremities),
		cur:      &stateAt{m: ri.state, ref: ri.snapshot, hasRef: true},
		storedAt: map[string]*stateAt{}, supplied: map[string]*stateAt{},
		refd: map[string]bool{}, pending: map[string][]string{}, known: map[string]*Event{},
		rejReason: map[string]string{},
	}
	results := make([]IngestResult, len(pdus))
	order, err := x.prepare(ctx, pdus, results)
	if err != nil {
		return nil, err
	}
	for _, i := range order {
		if err := x.process(ctx, pdus[i], &results[i]); err != nil {
			return nil, err
		}
	}
	if o.mustAccept != "" {
		for _, r := range results {
			if r.EventID == o.mustAccept && (!r.Stored || r.Status != StatusAccepted) {
				why := r.Err
				if why == nil {
					why = errors.New("not stored")
				}
				return nil, fmt.Errorf("event %s not accepted: %w", r.EventID, why)
			}
		}
	}
	if len(x.items) == 0 {
		return results, nil
	}
	if err := x.finish(ctx); err != nil {
		return nil, err
	}
	if err := x.write(ctx); err != nil {
		return nil, err
	}
	accepted := x.publish()
	for i := range results {
		if it := x.byEventID[results[i].EventID]; it != nil && it.res == &results[i] {
			results[i].Event = it.ev
		}
	}
	if e.NewEvents != nil && len(accepted) > 0 {
		e.NewEvents(accepted)
	}
	return results, nil
}

// prepare validates the batch, finds what is already stored, loads what
// the events refer to and returns the order to process them in: parents
// (prev and auth events) before children, then by depth.
func (x *ingestBatch) prepare(ctx context.Context, pdus []gomatrixserverlib.PDU, results []IngestResult) ([]int, error) {
	var ids, refs []string
	index := map[string]int{}
	for i, p := range pdus {
		id := p.EventID()
		results[i].EventID = id
		if _, dup := index[id]; dup {
			results[i].Err = errors.New("event given twice in the batch")
			continue
		}
		if p.Version() != x.ri.version {
			results[i].Err = fmt.Errorf("event of room version %s in a room of version %s", p.Version(), x.ri.version)
			continue
		}
		if p.RoomID().String() != x.ri.id && !(x.creating && x.ri.id == "") {
			results[i].Err = fmt.Errorf("event of room %s, not %s", p.RoomID().String(), x.ri.id)
			continue
		}
		index[id] = i
		ids = append(ids, id)
		refs = append(refs, p.PrevEventIDs()...)
		refs = append(refs, p.AuthEventIDs()...)
		if p.Type() == spec.MRoomRedaction && p.Redacts() != "" {
			refs = append(refs, p.Redacts())
		}
	}
	for _, ids := range x.opts.prevState {
		refs = append(refs, ids...)
	}
	for prev := range x.opts.prevState {
		refs = append(refs, prev)
	}
	if err := x.loadIDs(ctx, append(append(refs, ids...), x.ri.extremities...)); err != nil {
		return nil, err
	}
	var rejected []string
	for _, id := range ids {
		if ev := x.get(id); ev != nil {
			x.known[id] = ev
			if ev.Status == StatusRejected {
				rejected = append(rejected, id)
			}
		}
	}
	if err := x.loadBookkeeping(ctx, ids, rejected); err != nil {
		return nil, err
	}
	// Kahn's algorithm over the batch's own edges.
	deps := map[string]int{}
	children := map[string][]string{}
	for _, id := range ids {
		p := pdus[index[id]]
		seen := map[string]bool{}
		// Parents: prev and auth events, and the state supplied for the
		// event or its prev events (stored first, so snapshots can name them).
		parents := append(p.PrevEventIDs(), p.AuthEventIDs()...)
		parents = append(parents, x.opts.stateBefore[id]...)
		for _, prev := range p.PrevEventIDs() {
			parents = append(parents, x.opts.prevState[prev]...)
		}
		for _, parent := range parents {
			if _, in := index[parent]; in && !seen[parent] && parent != id {
				seen[parent] = true
				deps[id]++
				children[parent] = append(children[parent], id)
			}
		}
	}
	ready := &batchHeap{pdus: pdus}
	for _, id := range ids {
		if deps[id] == 0 {
			ready.idx = append(ready.idx, index[id])
		}
	}
	heap.Init(ready)
	out := make([]int, 0, len(ids))
	done := make(map[int]bool, len(ids))
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		out = append(out, i)
		done[i] = true
		for _, c := range children[pdus[i].EventID()] {
			if deps[c]--; deps[c] == 0 {
				heap.Push(ready, index[c])
			}
		}
	}
	for _, id := range ids { // a cycle (forged v1/v2 IDs): never processed
		if !done[index[id]] {
			results[index[id]].Err = errors.New("event is part of a prev_events cycle")
		}
	}
	return out, nil
}

// batchHeap orders the events of a batch that are ready to process: lowest
// depth first, then in the order given.
type batchHeap struct {
	pdus []gomatrixserverlib.PDU
	idx  []int
}

func (h *batchHeap) Len() int { return len(h.idx) }
func (h *batchHeap) Less(i, j int) bool {
	a, b := h.idx[i], h.idx[j]
	if da, db := h.pdus[a].Depth(), h.pdus[b].Depth(); da != db {
		return da < db
	}
	return a < b
}
func (h *batchHeap) Swap(i, j int) { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *batchHeap) Push(x any)    { h.idx = append(h.idx, x.(int)) }
func (h *batchHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// loadBookkeeping reads which batch events stored accepted events already
// reference, the redactions waiting for batch events, and why known
// events were rejected.
func (x *ingestBatch) loadBookkeeping(ctx context.Context, ids, rejected []string) error {
	query := func(q string, list []string, fn func(a, b string)) error {
		for len(list) > 0 {
			batch := list[:min(len(list), 500)]
			list = list[len(batch):]
			args := []any{x.ri.id}
			ph := make([]string, len(batch))
			for i, id := range batch {
				args = append(args, id)
				ph[i] = fmt.Sprintf("$%d", i+2)
			}
			rows, err := x.e.db.Query(ctx, strings.Replace(q, "(?)", "("+strings.Join(ph, ",")+")", 1), args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var a, b string
				if err := rows.Scan(&a, &b); err != nil {
					rows.Close()
					return err
				}
				fn(a, b)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := query(`SELECT ee.prev_event_id, ee.event_id FROM event_edges ee JOIN events ev ON ev.event_id = ee.event_id
		WHERE ee.room_id = $1 AND ev.status = 0 AND ee.prev_event_id IN (?)`, ids, func(prev, _ string) { x.refd[prev] = true }); err != nil {
		return fmt.Errorf("load edges: %w", err)
	}
	if err := query(`SELECT redacts, redaction_id FROM pending_redactions WHERE room_id = $1 AND redacts IN (?)`, ids,
		func(target, red string) { x.pending[target] = append(x.pending[target], red) }); err != nil {
		return fmt.Errorf("load pending redactions: %w", err)
	}
	if err := query(`SELECT event_id, reason FROM event_rejections WHERE room_id = $1 AND event_id IN (?)`, rejected,
		func(id, reason string) { x.rejReason[id] = reason }); err != nil {
		return fmt.Errorf("load rejections: %w", err)
	}
	return nil
}

// process runs the checks on one event and records the outcome.
func (x *ingestBatch) process(ctx context.Context, pdu gomatrixserverlib.PDU, res *IngestResult) error {
	id := pdu.EventID()
	outlier := x.opts.outliers || x.opts.outlierIDs[id]
	ev := &Event{PDU: pdu}
	deoutlier := false
	if known := x.known[id]; known != nil {
		if known.Status != StatusOutlier || outlier {
			res.Stored, res.Known, res.Status, res.Event = true, true, known.Status, known
			if r, ok := x.rejReason[id]; ok {
				res.Err = errors.New(r)
			}
			return nil
		}
		// An outlier joins the timeline: keep its row (and redactions).
		ev = &Event{PDU: known.PDU, NID: known.NID, RedactedBy: known.RedactedBy}
		deoutlier = true
	} else {
		x.nextProv--
		ev.NID = x.nextProv
	}

	// Auth against the event's own auth events.
	var missing []string
	authEvs := make([]*Event, 0, len(pdu.AuthEventIDs()))
	for _, a := range pdu.AuthEventIDs() {
		if ae := x.get(a); ae != nil {
			authEvs = append(authEvs, ae)
		} else {
			missing = append(missing, a)
		}
	}
	if len(missing) > 0 {
		res.MissingAuth, res.Err = missing, ErrMissingAuthEvents
		return nil
	}
	rejection, err := x.checkAuthEvents(ctx, ev, authEvs)
	if err != nil {
		return err
	}
	it := &ingestItem{ev: ev, res: res, deoutlier: deoutlier}
	if outlier {
		it.outlier = true
		x.add(it, StatusOutlier, rejection)
		return nil
	}

	// The state before the event.
	before, missingPrevs, err := x.stateBefore(ctx, ev)
	var bad badStateError
	if errors.As(err, &bad) {
		res.Err = bad.error
		return nil
	}
	if err != nil {
		return err
	}
	if missingPrevs != nil {
		if rejection == nil {
			res.MissingPrevs, res.Err = missingPrevs, ErrMissingPrevEvents
			return nil
		}
		// Rejected anyway: store it (without state) so it is not fetched again.
		x.add(it, StatusRejected, rejection)
		return nil
	}
	it.before = before
	if rejection == nil {
		if err := x.allowedByState(ctx, ev, before.m); err != nil {
			rejection = fmt.Errorf("not allowed by the state before the event: %w", err)
		}
	}
	if rejection != nil {
		x.add(it, StatusRejected, rejection)
		return nil
	}

	// Soft failure: auth against the current state. Events that stored
	// events already build on are history (backfill), not new.
	status := StatusAccepted
	var softFail error
	if len(x.ext) > 0 && !x.refd[id] && !x.opts.noSoftFail[id] && !sameSet(ev.PrevEventIDs(), x.ext) {
		if err := x.allowedByState(ctx, ev, x.cur.m); err != nil {
			status, softFail = StatusSoftFailed, fmt.Errorf("not allowed by the current state of the room: %w", err)
		}
	}
	x.add(it, status, softFail)
	if status == StatusAccepted {
		if err := x.advance(ctx, it); err != nil {
			return err
		}
		if ev.Type() == spec.MRoomRedaction {
			if err := x.redactionArrived(ctx, it); err != nil {
				return err
			}
		}
	}
	return x.targetArrived(ctx, it)
}

// add records an item with its outcome.
func (x *ingestBatch) add(it *ingestItem, status int, why error) {
	it.ev.Status = status
	it.res.Stored, it.res.Status, it.res.Err = true, status, why
	if why != nil && status == StatusRejected {
		it.reason = why.Error()
	}
	if it.deoutlier {
		// Replace the cached outlier in the overlay by the new version.
		delete(x.byID, it.ev.EventID())
	}
	x.eventSource.add(it.ev)
	x.byEventID[it.ev.EventID()] = it
	x.items = append(x.items, it)
	it.planMark = len(x.plans)
}

// checkAuthEvents applies the auth rules on the event's auth_events: no
// duplicates, only the events the auth events selection asks for (with the
// create event in rooms before v12, without it in v12), none rejected, all
// of this room; then the auth rules themselves against them. It returns
// the reason for rejection, or nil.
func (x *ingestBatch) checkAuthEvents(ctx context.Context, ev *Event, authEvs []*Event) (rejection, err error) {
	domainless := x.ri.verImpl.DomainlessRoomIDs()
	if ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("") {
		if len(authEvs) > 0 || !x.creating {
			return errors.New("a room has one create event, with no auth events"), nil
		}
		provider, _ := gomatrixserverlib.NewAuthEvents(nil)
		return gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender), nil
	}
	needed := map[StateKey]bool{}
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev.PDU}).Tuples() {
		if t.EventType == spec.MRoomCreate && domainless {
			continue
		}
		needed[StateKey{t.EventType, t.StateKey}] = true
	}
	var create *Event
	if domainless {
		// gomatrixserverlib lists the create event (implied by the room ID)
		// among the auth events of v12 events; it must not be there itself.
		var raw struct {
			AuthEvents []string `json:"auth_events"`
		}
		if err := json.Unmarshal(ev.JSON(), &raw); err != nil {
			return fmt.Errorf("bad auth_events: %w", err), nil
		}
		createID := "$" + strings.TrimPrefix(ev.RoomID().String(), "!")
		if slices.Contains(raw.AuthEvents, createID) {
			return errors.New("the create event must not be among the auth events"), nil
		}
		if create, err = x.createEvent(ctx); err != nil {
			return nil, err
		}
		if create == nil || create.EventID() != createID || isRejected(create) {
			return errors.New("the room ID is not that of an accepted create event"), nil
		}
	}
	seen := map[StateKey]bool{}
	pdus := make([]gomatrixserverlib.PDU, 0, len(authEvs)+1)
	for _, ae := range authEvs {
		if create != nil && ae.EventID() == create.EventID() {
			continue // the implied one
		}
		switch {
		case ae.RoomID().String() != ev.RoomID().String():
			return fmt.Errorf("auth event %s is in another room", ae.EventID()), nil
		case !ae.IsState() || !needed[ae.Key()]:
			return fmt.Errorf("auth event %s (%s) is not one the auth rules ask for", ae.EventID(), ae.Type()), nil
		case seen[ae.Key()]:
			return fmt.Errorf("two auth events for (%s, %s)", ae.Type(), *ae.StateKey()), nil
		case isRejected(ae):
			return fmt.Errorf("auth event %s was rejected", ae.EventID()), nil
		}
		seen[ae.Key()] = true
		pdus = append(pdus, ae.PDU)
	}
	if create != nil {
		pdus = append(pdus, create.PDU)
	} else if !seen[StateKey{spec.MRoomCreate, ""}] {
		return errors.New("no create event among the auth events"), nil
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return err, nil
	}
	return gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender), nil
}

// stateBefore computes the state before ev; missing lists prev_events
// whose state is unknown.
func (x *ingestBatch) stateBefore(ctx context.Context, ev *Event) (*stateAt, []string, error) {
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
		return nil, nil, errors.New("event has no prev_events")
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

// redactionArrived applies an accepted redaction to its target, or waits
// for the target to arrive.
func (x *ingestBatch) redactionArrived(ctx context.Context, it *ingestItem) error {
	targetID := it.ev.Redacts()
	if targetID == "" {
		return nil
	}
	target := x.get(targetID)
	if target == nil {
		x.newPend = append(x.newPend, pendingRedaction{targetID, it.ev.EventID()})
		return nil
	}
	return x.maybeRedact(ctx, it.ev, it.before.m, target)
}

// targetArrived applies stored redactions that were waiting for this event.
func (x *ingestBatch) targetArrived(ctx context.Context, it *ingestItem) error {
	reds := x.pending[it.ev.EventID()]
	if len(reds) == 0 {
		return nil
	}
	if err := x.loadIDs(ctx, reds); err != nil {
		return err
	}
	for _, id := range reds {
		red := x.get(id)
		if red == nil || red.Status != StatusAccepted || !hasState(red) {
			continue
		}
		before, err := x.e.loadSnapshot(ctx, red.StateBefore)
		if err != nil {
			return err
		}
		if err := x.maybeRedact(ctx, red, before, it.ev); err != nil {
			return err
		}
	}
	return nil
}

// maybeRedact redacts target if the redaction may (the room version's
// "handling redactions" rules: same server as the target's sender, or the
// redact power level at the redaction).
func (x *ingestBatch) maybeRedact(ctx context.Context, red *Event, before StateMap, target *Event) error {
	if target.RedactedBy != "" || target.RoomID().String() != red.RoomID().String() {
		return nil
	}
	allowed := sameServer(red.SenderID(), target.SenderID())
	switch x.ri.version {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2:
		allowed = true // the auth rules already checked it
	}
	if !allowed {
		level, redactLevel, err := x.powerAtState(ctx, before, string(red.SenderID()))
		if err != nil {
			return err
		}
		allowed = level >= redactLevel
	}
	if !allowed {
		return nil
	}
	js, err := redactEventJSON(x.ri.verImpl, target.JSON())
	if err != nil {
		return fmt.Errorf("redact %s: %w", target.EventID(), err)
	}
	pdu, err := x.ri.verImpl.NewEventFromTrustedJSONWithEventID(target.EventID(), js, true)
	if err != nil {
		return fmt.Errorf("redact %s: %w", target.EventID(), err)
	}
	if it := x.byEventID[target.EventID()]; it != nil && it.ev == target {
		target.PDU, target.RedactedBy = pdu, red.EventID()
		return nil
	}
	x.dbRedacts = append(x.dbRedacts, dbRedaction{target, red.EventID()})
	redacted := *target
	redacted.PDU, redacted.RedactedBy = pdu, red.EventID()
	x.byID[target.EventID()] = &redacted
	x.byNID[target.NID] = &redacted
	return nil
}

// redactEventJSON applies the room version's redaction algorithm. It
// corrects gomatrixserverlib for room versions 11 and later, whose
// algorithm keeps content.third_party_invite.signed of m.room.member
// events: the library drops it, which would make our redacted copies (and
// the hashes and signatures checked on them) differ from other servers'.
func redactEventJSON(v gomatrixserverlib.IRoomVersion, js []byte) ([]byte, error) {
	out, err := v.RedactEventJSON(js)
	if err != nil || !redactsInContent(v) {
		return out, err
	}
	var ev struct {
		Type    string `json:"type"`
		Content struct {
			ThirdPartyInvite *struct {
				Signed json.RawMessage `json:"signed"`
			} `json:"third_party_invite"`
		} `json:"content"`
	}
	if json.Unmarshal(js, &ev) != nil || ev.Type != spec.MRoomMember || ev.Content.ThirdPartyInvite == nil || ev.Content.ThirdPartyInvite.Signed == nil {
		return out, nil
	}
	var top, content map[string]json.RawMessage
	if err := json.Unmarshal(out, &top); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(top["content"], &content); err != nil || content == nil {
		content = map[string]json.RawMessage{}
	}
	content["third_party_invite"], _ = json.Marshal(map[string]json.RawMessage{"signed": ev.Content.ThirdPartyInvite.Signed})
	top["content"], _ = json.Marshal(content)
	return json.Marshal(top)
}

// sameServer reports whether two users are on the same server.
func sameServer(a, b spec.SenderID) bool {
	_, da, _ := strings.Cut(string(a), ":")
	_, db, _ := strings.Cut(string(b), ":")
	return da == db
}

// powerAtState returns a user's power level and the redact level in a
// state.
func (x *ingestBatch) powerAtState(ctx context.Context, state StateMap, userID string) (level, redact int64, err error) {
	creators, err := x.creators(ctx)
	if err != nil {
		return 0, 0, err
	}
	var pdus []gomatrixserverlib.PDU
	for _, k := range []StateKey{{spec.MRoomCreate, ""}, {spec.MRoomPowerLevels, ""}} {
		if nid, ok := state[k]; ok {
			ev, err := x.nid(ctx, nid)
			if err != nil {
				return 0, 0, err
			}
			if ev != nil {
				pdus = append(pdus, ev.PDU)
			}
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return 0, 0, err
	}
	creator := ""
	if c, _ := provider.Create(); c != nil {
		creator = string(c.SenderID())
	}
	pl, err := gomatrixserverlib.NewPowerLevelContentFromAuthEvents(provider, creator)
	if err != nil {
		return 0, 0, err
	}
	if creators[userID] {
		return gomatrixserverlib.CreatorPowerLevel, pl.Redact, nil
	}
	return pl.UserLevel(spec.SenderID(userID)), pl.Redact, nil
}

// sameSet reports whether two lists hold the same IDs.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, id := range a {
		if !slices.Contains(b, id) {
			return false
		}
	}
	return true
}

// refOf returns the snapshot ref of a state, planning its snapshot.
func (x *ingestBatch) refOf(s *stateAt) int64 {
	if s.hasRef {
		return s.ref
	}
	p := &snapPlan{full: s.m, delta: s.m}
	if s.parent != nil {
		p.parent, p.delta = x.refOf(s.parent), s.delta
	}
	x.plans = append(x.plans, p)
	s.ref, s.hasRef = -int64(len(x.plans)), true
	return s.ref
}

// finish plans the snapshots the batch stores: the state before each event
// (in order, so each plan only names events stored before it) and the new
// current state.
func (x *ingestBatch) finish(ctx context.Context) error {
	for _, it := range x.items {
		if it.before != nil {
			x.refOf(it.before)
		}
		it.planMark = len(x.plans)
	}
	x.refOf(x.cur)
	// Load the events whose current-state rows change.
	var nids []int64
	for _, nid := range diffState(x.ri.state, x.cur.m) {
		if nid > 0 {
			nids = append(nids, nid)
		}
	}
	return x.loadNIDs(ctx, nids)
}

// write stores the batch in one transaction.
func (x *ingestBatch) write(ctx context.Context) error {
	e, ri := x.e, x.ri
	real := map[int64]int64{}    // provisional NID → NID
	stored := map[int64]*Event{} // NID → event, for the batch's events
	var unknownNID error
	translate := func(m StateMap) StateMap {
		var out StateMap
		for k, nid := range m {
			if nid < 0 {
				if out == nil {
					out = m.Clone()
				}
				if out[k] = real[nid]; out[k] == 0 {
					unknownNID = fmt.Errorf("state names event %d before it is stored", nid)
				}
			}
		}
		if out == nil {
			return m
		}
		return out
	}
	refID := func(ref int64) int64 {
		if ref < 0 {
			return x.plans[-ref-1].id
		}
		return ref
	}
	now := time.Now().UnixMilli()
	return e.db.WriteTx(ctx, func(tx *db.Tx) error {
		if x.creating {
			if _, err := tx.Exec(ctx, `INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)`,
				ri.id, string(ri.version), now); err != nil {
				return fmt.Errorf("insert room: %w", err)
			}
		}
		planned := 0
		storePlans := func(upto int) error {
			for ; planned < upto; planned++ {
				p := x.plans[planned]
				p.full, p.delta = translate(p.full), translate(p.delta)
				if unknownNID != nil {
					return unknownNID
				}
				id, err := e.storeSnapshot(ctx, tx, ri.id, refID(p.parent), p.full, p.delta)
				if err != nil {
					return err
				}
				p.id = id
			}
			return nil
		}
		for _, it := range x.items {
			if err := storePlans(it.planMark); err != nil {
				return err
			}
			ev := it.ev
			ev.StateBefore = stateUnknown
			if it.before != nil {
				ev.StateBefore = refID(it.before.ref)
			}
			var pos int64
			if ev.Status == StatusAccepted {
				var err error
				if pos, err = db.NextStreamPos(ctx, tx); err != nil {
					return err
				}
			}
			prov := ev.NID
			if it.deoutlier {
				if _, err := tx.Exec(ctx, `UPDATE events SET status = $1, stream_pos = $2, state_before = $3 WHERE nid = $4`,
					ev.Status, pos, ev.StateBefore, ev.NID); err != nil {
					return fmt.Errorf("update outlier: %w", err)
				}
				ev.Pos = pos
			} else if err := insertEventAt(ctx, tx, ri.id, ev, pos); err != nil {
				return err
			}
			real[prov] = ev.NID
			stored[ev.NID] = ev
			if !it.outlier {
				for _, p := range ev.PrevEventIDs() {
					if _, err := tx.Exec(ctx, `INSERT INTO event_edges (room_id, event_id, prev_event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
						ri.id, ev.EventID(), p); err != nil {
						return fmt.Errorf("insert edge: %w", err)
					}
				}
			}
			if it.reason != "" {
				if _, err := tx.Exec(ctx, `INSERT INTO event_rejections (event_id, room_id, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
					ev.EventID(), ri.id, it.reason); err != nil {
					return fmt.Errorf("insert rejection: %w", err)
				}
			}
			if reds := x.pending[ev.EventID()]; len(reds) > 0 && ev.RedactedBy != "" {
				if _, err := tx.Exec(ctx, `DELETE FROM pending_redactions WHERE redacts = $1`, ev.EventID()); err != nil {
					return err
				}
			}
		}
		if err := storePlans(len(x.plans)); err != nil {
			return err
		}
		for _, r := range x.dbRedacts {
			if err := applyRedaction(ctx, tx, ri.verImpl, r.target, r.redaction); err != nil {
				return err
			}
		}
		for _, p := range x.newPend {
			if _, err := tx.Exec(ctx, `INSERT INTO pending_redactions (redacts, redaction_id, room_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
				p.target, p.redaction, ri.id); err != nil {
				return err
			}
		}
		// The room's current state and forward extremities.
		x.cur.m = translate(x.cur.m)
		if snap := refID(x.cur.ref); snap != ri.snapshot {
			if _, err := tx.Exec(ctx, `UPDATE rooms SET state_snapshot = $1 WHERE room_id = $2`, snap, ri.id); err != nil {
				return err
			}
		}
		for k, nid := range diffState(ri.state, x.cur.m) {
			if nid == 0 {
				if _, err := tx.Exec(ctx, `DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`, ri.id, k.Type, k.StateKey); err != nil {
					return err
				}
				continue
			}
			ev := stored[nid]
			if ev == nil {
				ev = x.byNID[nid]
			}
			if ev == nil {
				return fmt.Errorf("current state event %d not loaded", nid)
			}
			if err := upsertCurrentState(ctx, tx, ri.id, ev); err != nil {
				return err
			}
		}
		for _, id := range ri.extremities {
			if !slices.Contains(x.ext, id) {
				if _, err := tx.Exec(ctx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2`, ri.id, id); err != nil {
					return err
				}
			}
		}
		for _, id := range x.ext {
			if !slices.Contains(ri.extremities, id) {
				if _, err := tx.Exec(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`, ri.id, id); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// publish updates the engine's caches after the commit and returns the
// accepted events in stream order.
func (x *ingestBatch) publish() []*Event {
	e, ri := x.e, x.ri
	for _, p := range x.plans {
		e.snapshots.Put(p.id, p.full)
	}
	var accepted []*Event
	maxDepth := ri.maxDepth
	for _, it := range x.items {
		e.cacheEvent(it.ev)
		if it.ev.Status == StatusAccepted {
			accepted = append(accepted, it.ev)
			if slices.Contains(x.ext, it.ev.EventID()) {
				maxDepth = max(maxDepth, it.ev.Depth())
			}
		}
	}
	for _, r := range x.dbRedacts {
		e.events.Remove(r.target.NID)
	}
	newRI := *ri
	newRI.extremities = slices.Clone(x.ext)
	newRI.maxDepth = maxDepth
	newRI.state = x.cur.m
	newRI.snapshot = x.cur.ref
	if newRI.snapshot < 0 {
		newRI.snapshot = x.plans[-newRI.snapshot-1].id
	}
	e.rooms.Put(ri.id, &newRI)
	return accepted
}

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
