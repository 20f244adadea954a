package rooms

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
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
	backfill    bool   // history from before the room's start: see AsBackfill
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
	if e.NewEvents != nil && len(accepted) > 0 && !o.backfill {
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
	if x.opts.backfill {
		for _, id := range ids { // history: stored events build on all of it
			x.refd[id] = true
		}
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
		if len(authEvs) > 0 || !(x.creating || x.backfillsCreate(ev)) {
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
