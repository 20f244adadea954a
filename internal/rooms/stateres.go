package rooms

import (
	"cmp"
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// State resolution.
//
// Room version 1 uses gomatrixserverlib's implementation of the original
// algorithm. Versions 2–12 use the implementation below of state resolution
// v2 (rooms/v2) and v2.1 (rooms/v12: iterative auth checks start from the
// empty state, the full conflicted set includes the conflicted state
// subgraph). It is written here rather than taken from gomatrixserverlib
// because the pinned library panics on v2.1 as soon as a power event is
// conflicted (it ranks senders before it has resolved the create event),
// prints to stdout while computing the conflicted subgraph, and during
// iterative auth checks falls back to the event being checked instead of
// its auth event. The auth rules themselves (gomatrixserverlib.Allowed) are
// still the library's.
//
// Where the spec leaves a detail open the behaviour follows Synapse, the
// implementation every other server has to converge with: the power events
// pulled in for the reverse topological power ordering are those reachable
// through auth events inside the full conflicted set, m.room.create counts
// as a power event, and events that were rejected are never admitted.

// eventSource loads the events the engine's checks and state resolution
// need: from an overlay of events not stored yet (an ingest batch) first,
// then from the engine's caches and the database. It remembers what it
// loaded, so one resolution reads each event once.
type eventSource struct {
	e      *Engine
	ri     *roomInfo
	byID   map[string]*Event
	byNID  map[int64]*Event
	create *Event
	plc    map[string]*gomatrixserverlib.PowerLevelContent // parsed power levels by event ID
}

func (e *Engine) newEventSource(ri *roomInfo) *eventSource {
	return &eventSource{e: e, ri: ri, byID: map[string]*Event{}, byNID: map[int64]*Event{},
		plc: map[string]*gomatrixserverlib.PowerLevelContent{}}
}

// add puts an event into the overlay.
func (s *eventSource) add(ev *Event) {
	s.byID[ev.EventID()] = ev
	s.byNID[ev.NID] = ev
	if ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("") && s.create == nil {
		s.create = ev
	}
}

// get returns a loaded event by ID, or nil.
func (s *eventSource) get(id string) *Event { return s.byID[id] }

// loadIDs makes every known event of ids available through get. Events of
// other rooms count as unknown.
func (s *eventSource) loadIDs(ctx context.Context, ids []string) error {
	var missing []string
	for _, id := range ids {
		if _, ok := s.byID[id]; ok {
			continue
		}
		if nid, ok := s.e.eventNIDs.Get(id); ok {
			if ev, ok := s.e.events.Get(nid); ok && ev.RoomID().String() == s.ri.id {
				s.add(ev)
				continue
			}
		}
		missing = append(missing, id)
	}
	for len(missing) > 0 {
		batch := missing[:min(len(missing), 500)]
		missing = missing[len(batch):]
		args := []any{s.ri.id}
		ph := make([]string, len(batch))
		for i, id := range batch {
			args = append(args, id)
			ph[i] = fmt.Sprintf("$%d", i+2)
		}
		rows, err := s.e.db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND event_id IN (`+strings.Join(ph, ",")+`)`, args...)
		if err != nil {
			return fmt.Errorf("load events: %w", err)
		}
		for rows.Next() {
			ev, err := scanEvent(rows.Scan, s.ri.version)
			if err != nil {
				rows.Close()
				return err
			}
			s.e.cacheEvent(ev)
			s.add(ev)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// loadNIDs makes the events of nids available through nid.
func (s *eventSource) loadNIDs(ctx context.Context, nids []int64) error {
	var missing []int64
	for _, n := range nids {
		if _, ok := s.byNID[n]; !ok && n > 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	evs, err := s.e.EventsByNID(ctx, s.ri.version, missing)
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if _, ok := s.byID[ev.EventID()]; !ok {
			s.add(ev)
		} else {
			s.byNID[ev.NID] = s.byID[ev.EventID()]
		}
	}
	return nil
}

// nid returns the event with NID n, loading it if needed (nil if unknown).
func (s *eventSource) nid(ctx context.Context, n int64) (*Event, error) {
	if ev, ok := s.byNID[n]; ok {
		return ev, nil
	}
	if err := s.loadNIDs(ctx, []int64{n}); err != nil {
		return nil, err
	}
	return s.byNID[n], nil
}

// createEvent returns the room's m.room.create event.
func (s *eventSource) createEvent(ctx context.Context) (*Event, error) {
	if s.create != nil {
		return s.create, nil
	}
	nid, ok := s.ri.state[StateKey{spec.MRoomCreate, ""}]
	if !ok {
		return nil, nil
	}
	ev, err := s.nid(ctx, nid)
	if err != nil {
		return nil, err
	}
	s.create = ev
	return ev, nil
}

// powerLevels returns the parsed content of a power levels event.
func (s *eventSource) powerLevels(ev *Event) *gomatrixserverlib.PowerLevelContent {
	if c, ok := s.plc[ev.EventID()]; ok {
		return c
	}
	c, err := gomatrixserverlib.NewPowerLevelContentFromEvent(ev.PDU)
	if err != nil {
		c = gomatrixserverlib.PowerLevelContent{}
		c.Defaults()
	}
	s.plc[ev.EventID()] = &c
	return &c
}

// creators returns the privileged creators of the room (v12), else nil.
func (s *eventSource) creators(ctx context.Context) (map[string]bool, error) {
	if !s.ri.verImpl.PrivilegedCreators() {
		return nil, nil
	}
	create, err := s.createEvent(ctx)
	if err != nil || create == nil {
		return nil, err
	}
	return creatorsOf(create), nil
}

// creatorsOf lists the sender of a create event and its
// additional_creators.
func creatorsOf(create *Event) map[string]bool {
	out := map[string]bool{string(create.SenderID()): true}
	var c struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	if json.Unmarshal(create.Content(), &c) == nil {
		for _, u := range c.AdditionalCreators {
			out[u] = true
		}
	}
	return out
}

// isRejected reports whether an event was rejected on receipt.
func isRejected(ev *Event) bool { return ev.Status == StatusRejected }

// resolveState resolves several room states into one with the state
// resolution algorithm of the room's version.
func (e *Engine) resolveState(ctx context.Context, ri *roomInfo, stateSets []StateMap) (StateMap, error) {
	return e.newEventSource(ri).resolveState(ctx, stateSets)
}

// resolveState is Engine.resolveState with the source's overlay.
func (s *eventSource) resolveState(ctx context.Context, stateSets []StateMap) (StateMap, error) {
	switch len(stateSets) {
	case 0:
		return StateMap{}, nil
	case 1:
		return stateSets[0], nil
	}
	if s.ri.verImpl.StateResAlgorithm() == gomatrixserverlib.StateResV1 {
		return s.resolveV1(ctx, stateSets)
	}
	return s.resolveV2(ctx, stateSets, s.ri.verImpl.StateResAlgorithm() == gomatrixserverlib.StateResV2_1)
}

// splitStates separates the unconflicted state from the conflicted keys.
// In v2 a key is conflicted unless every set has it with the same event;
// in v1 (absentIsConflict false) only differing present values conflict.
func splitStates(sets []StateMap, absentIsConflict bool) (StateMap, map[StateKey][]int64) {
	unconflicted := StateMap{}
	conflicted := map[StateKey][]int64{}
	for _, set := range sets {
		for k := range set {
			if _, done := unconflicted[k]; done {
				continue
			}
			if _, done := conflicted[k]; done {
				continue
			}
			// First time this key is seen: compare every set.
			var vals []int64
			absent := false
			for _, other := range sets {
				v, ok := other[k]
				if !ok {
					absent = true
					continue
				}
				if !slices.Contains(vals, v) {
					vals = append(vals, v)
				}
			}
			if len(vals) == 1 && (!absent || !absentIsConflict) {
				unconflicted[k] = vals[0]
			} else {
				conflicted[k] = vals
			}
		}
	}
	return unconflicted, conflicted
}

// resolveV1 runs the room version 1 algorithm (gomatrixserverlib's).
func (s *eventSource) resolveV1(ctx context.Context, sets []StateMap) (StateMap, error) {
	unconflicted, conflicted := splitStates(sets, false)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	var nids []int64
	for _, vs := range conflicted {
		nids = append(nids, vs...)
	}
	for _, nid := range unconflicted {
		nids = append(nids, nid)
	}
	if err := s.loadNIDs(ctx, nids); err != nil {
		return nil, err
	}
	var conflictedPDUs, authPDUs []gomatrixserverlib.PDU
	for _, vs := range conflicted {
		for _, nid := range vs {
			if ev := s.byNID[nid]; ev != nil {
				conflictedPDUs = append(conflictedPDUs, ev.PDU)
			}
		}
	}
	for _, nid := range unconflicted {
		if ev := s.byNID[nid]; ev != nil {
			authPDUs = append(authPDUs, ev.PDU)
		}
	}
	out := unconflicted.Clone()
	for _, p := range gomatrixserverlib.ResolveStateConflicts(conflictedPDUs, authPDUs, userIDForSender) {
		if ev := s.byID[p.EventID()]; ev != nil {
			out[ev.Key()] = ev.NID
		}
	}
	return out, nil
}

// resolveV2 runs state resolution v2, or v2.1 when v21 is set.
func (s *eventSource) resolveV2(ctx context.Context, sets []StateMap, v21 bool) (StateMap, error) {
	unconflicted, conflicted := splitStates(sets, true)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	var conflictedNIDs []int64
	isConflictedNID := map[int64]bool{}
	for _, vs := range conflicted {
		for _, nid := range vs {
			conflictedNIDs = append(conflictedNIDs, nid)
			isConflictedNID[nid] = true
		}
	}
	if err := s.loadNIDs(ctx, conflictedNIDs); err != nil {
		return nil, err
	}
	full := map[string]*Event{} // the full conflicted set
	conflictedIDs := map[string]bool{}
	for _, nid := range conflictedNIDs {
		if ev := s.byNID[nid]; ev != nil {
			full[ev.EventID()] = ev
			conflictedIDs[ev.EventID()] = true
		}
	}

	// Auth difference. The full auth chain of set i is the chain of its
	// unconflicted events (the same for every set) plus the chain of its
	// conflicted events, D_i. So the difference is the events in some but
	// not all D_i that are not in the chain of the unconflicted state.
	chains := make([]map[string]*Event, len(sets))
	union := map[string]*Event{}
	for i, set := range sets {
		var roots []*Event
		for k := range conflicted {
			if nid, ok := set[k]; ok {
				if ev := s.byNID[nid]; ev != nil {
					roots = append(roots, ev)
				}
			}
		}
		c, err := s.authChain(ctx, roots, nil)
		if err != nil {
			return nil, err
		}
		chains[i] = c
		for id, ev := range c {
			union[id] = ev
		}
	}
	candidates := map[string]bool{}
	for id := range union {
		for _, c := range chains {
			if _, ok := c[id]; !ok {
				candidates[id] = true
				break
			}
		}
	}
	if len(candidates) > 0 {
		var roots []int64
		for _, nid := range unconflicted {
			roots = append(roots, nid)
		}
		if err := s.loadNIDs(ctx, roots); err != nil {
			return nil, err
		}
		rootEvs := make([]*Event, 0, len(roots))
		for _, nid := range roots {
			if ev := s.byNID[nid]; ev != nil {
				rootEvs = append(rootEvs, ev)
			}
		}
		inCommon, err := s.authChain(ctx, rootEvs, candidates)
		if err != nil {
			return nil, err
		}
		for id := range candidates {
			if _, ok := inCommon[id]; !ok {
				full[id] = union[id]
			}
		}
	}
	if v21 {
		// Conflicted state subgraph: events of the conflicted events' auth
		// chains from which another conflicted event can be reached.
		reaches := map[string]bool{}
		var reach func(ev *Event) bool
		reach = func(ev *Event) bool {
			id := ev.EventID()
			if r, ok := reaches[id]; ok {
				return r
			}
			reaches[id] = conflictedIDs[id] // also breaks cycles
			if conflictedIDs[id] {
				return true
			}
			for _, a := range ev.AuthEventIDs() {
				if ae := union[a]; ae != nil && reach(ae) {
					reaches[id] = true
					return true
				}
			}
			return false
		}
		for id, ev := range union {
			if reach(ev) {
				full[id] = ev
			}
		}
	}

	// Power events and the events of the full conflicted set in their auth
	// chains, in reverse topological power order.
	var power []*Event
	for _, ev := range full {
		if isPowerEvent(ev) {
			power = append(power, ev)
		}
	}
	graph := map[string][]string{} // event → its auth events inside the set
	for len(power) > 0 {
		ev := power[len(power)-1]
		power = power[:len(power)-1]
		if _, done := graph[ev.EventID()]; done {
			continue
		}
		var deps []string
		for _, a := range ev.AuthEventIDs() {
			if ae, ok := full[a]; ok {
				deps = append(deps, a)
				if _, done := graph[a]; !done {
					power = append(power, ae)
				}
			}
		}
		graph[ev.EventID()] = deps
	}
	sortedPower, err := s.powerSort(ctx, graph, full)
	if err != nil {
		return nil, err
	}
	resolved := StateMap{}
	if !v21 {
		resolved = unconflicted.Clone()
	}
	if err := s.iterativeAuthChecks(ctx, resolved, sortedPower); err != nil {
		return nil, err
	}

	// The other events, in mainline order of the resolved power levels.
	others := make([]*Event, 0, len(full)-len(graph))
	for id, ev := range full {
		if _, ok := graph[id]; !ok {
			others = append(others, ev)
		}
	}
	if err := s.mainlineSort(ctx, others, resolved); err != nil {
		return nil, err
	}
	if err := s.iterativeAuthChecks(ctx, resolved, others); err != nil {
		return nil, err
	}
	for k, nid := range unconflicted {
		resolved[k] = nid
	}
	return resolved, nil
}

// isPowerEvent reports whether an event may take away someone's ability to
// act: power levels, join rules, the create event, and kicks and bans.
func isPowerEvent(ev *Event) bool {
	if !ev.IsState() {
		return false
	}
	switch ev.Type() {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomCreate:
		return ev.StateKeyEquals("")
	case spec.MRoomMember:
		m, err := ev.Membership()
		return err == nil && (m == spec.Leave || m == spec.Ban) && !ev.StateKeyEquals(string(ev.SenderID()))
	}
	return false
}

// authChain returns the auth chain of roots (without the roots, unless one
// is an auth event of another). With stopWhen set, it stops as soon as all
// of those events are found and then returns only what it has seen.
func (s *eventSource) authChain(ctx context.Context, roots []*Event, stopWhen map[string]bool) (map[string]*Event, error) {
	seen := map[string]*Event{}
	found := 0
	var frontier []string
	queued := map[string]bool{}
	for _, r := range roots {
		for _, a := range r.AuthEventIDs() {
			if !queued[a] {
				queued[a] = true
				frontier = append(frontier, a)
			}
		}
	}
	for len(frontier) > 0 {
		if err := s.loadIDs(ctx, frontier); err != nil {
			return nil, err
		}
		var next []string
		for _, id := range frontier {
			ev := s.byID[id]
			if ev == nil {
				continue // unknown auth event: nothing to follow
			}
			seen[id] = ev
			if stopWhen[id] {
				found++
				if found == len(stopWhen) {
					return seen, nil
				}
			}
			for _, a := range ev.AuthEventIDs() {
				if !queued[a] {
					queued[a] = true
					next = append(next, a)
				}
			}
		}
		frontier = next
	}
	return seen, nil
}

// senderPower is the power level of an event's sender according to its
// auth events, for the reverse topological power ordering.
func (s *eventSource) senderPower(ctx context.Context, ev *Event, creators map[string]bool) (int64, error) {
	sender := string(ev.SenderID())
	if creators[sender] {
		return gomatrixserverlib.CreatorPowerLevel, nil
	}
	if err := s.loadIDs(ctx, ev.AuthEventIDs()); err != nil {
		return 0, err
	}
	var create *Event
	for _, a := range ev.AuthEventIDs() {
		ae := s.byID[a]
		if ae == nil || !ae.IsState() || !ae.StateKeyEquals("") {
			continue
		}
		switch ae.Type() {
		case spec.MRoomPowerLevels:
			return s.powerLevels(ae).UserLevel(ev.SenderID()), nil
		case spec.MRoomCreate:
			create = ae
		}
	}
	if create == nil {
		return 0, nil
	}
	creator := string(create.SenderID())
	if s.ri.verImpl.CreatorInCreateEvent() {
		var c struct {
			Creator string `json:"creator"`
		}
		_ = json.Unmarshal(create.Content(), &c)
		creator = c.Creator
	}
	if creator == sender {
		return 100, nil
	}
	return 0, nil
}

// powerOrdered is an event with its rank in the reverse topological power
// ordering.
type powerOrdered struct {
	ev    *Event
	power int64
}

type powerHeap []powerOrdered

func (h powerHeap) Len() int { return len(h) }
func (h powerHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.power != b.power {
		return a.power > b.power
	}
	if a.ev.OriginServerTS() != b.ev.OriginServerTS() {
		return a.ev.OriginServerTS() < b.ev.OriginServerTS()
	}
	return a.ev.EventID() < b.ev.EventID()
}
func (h powerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *powerHeap) Push(x any)   { *h = append(*h, x.(powerOrdered)) }
func (h *powerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// powerSort orders the events of graph (event → auth events inside the
// graph) by Kahn's algorithm, earliest first, choosing among the ready
// events the sender with the greatest power, then the earliest
// origin_server_ts, then the smallest event ID.
func (s *eventSource) powerSort(ctx context.Context, graph map[string][]string, events map[string]*Event) ([]*Event, error) {
	creators, err := s.creators(ctx)
	if err != nil {
		return nil, err
	}
	outdegree := make(map[string]int, len(graph))
	dependents := map[string][]string{}
	h := &powerHeap{}
	rank := func(id string) (powerOrdered, error) {
		ev := events[id]
		p, err := s.senderPower(ctx, ev, creators)
		return powerOrdered{ev, p}, err
	}
	for id, deps := range graph {
		outdegree[id] = len(deps)
		for _, d := range deps {
			dependents[d] = append(dependents[d], id)
		}
		if len(deps) == 0 {
			po, err := rank(id)
			if err != nil {
				return nil, err
			}
			*h = append(*h, po)
		}
	}
	heap.Init(h)
	out := make([]*Event, 0, len(graph))
	for h.Len() > 0 {
		po := heap.Pop(h).(powerOrdered)
		out = append(out, po.ev)
		for _, p := range dependents[po.ev.EventID()] {
			outdegree[p]--
			if outdegree[p] == 0 {
				next, err := rank(p)
				if err != nil {
					return nil, err
				}
				heap.Push(h, next)
			}
		}
	}
	return out, nil
}

// mainlineSort orders events by the mainline of the resolved power levels:
// events whose power levels branch off the mainline earlier come first,
// then by origin_server_ts and event ID.
func (s *eventSource) mainlineSort(ctx context.Context, evs []*Event, resolved StateMap) error {
	if len(evs) == 0 {
		return nil
	}
	// pl returns the power levels event among ev's auth events.
	pl := func(ev *Event) (*Event, error) {
		if err := s.loadIDs(ctx, ev.AuthEventIDs()); err != nil {
			return nil, err
		}
		for _, a := range ev.AuthEventIDs() {
			if ae := s.byID[a]; ae != nil && ae.Type() == spec.MRoomPowerLevels && ae.StateKeyEquals("") {
				return ae, nil
			}
		}
		return nil, nil
	}
	var mainline []string
	if nid, ok := resolved[StateKey{spec.MRoomPowerLevels, ""}]; ok {
		p, err := s.nid(ctx, nid)
		if err != nil {
			return err
		}
		for seen := map[string]bool{}; p != nil && !seen[p.EventID()]; {
			seen[p.EventID()] = true
			mainline = append(mainline, p.EventID())
			if p, err = pl(p); err != nil {
				return err
			}
		}
	}
	depthOf := make(map[string]int, len(mainline)) // oldest power levels: 1; off the mainline: 0
	for i, id := range mainline {
		depthOf[id] = len(mainline) - i
	}
	// mainlineDepth follows the power levels events of ev's auth events
	// until one is on the mainline, remembering the answer for the path.
	mainlineDepth := func(ev *Event) (int, error) {
		var path []string
		d := 0
		for cur := ev; cur != nil; {
			if md, ok := depthOf[cur.EventID()]; ok {
				d = md
				break
			}
			if slices.Contains(path, cur.EventID()) {
				break // a cycle of forged IDs: off the mainline
			}
			path = append(path, cur.EventID())
			next, err := pl(cur)
			if err != nil {
				return 0, err
			}
			cur = next
		}
		for _, id := range path[min(1, len(path)):] { // not ev itself: it is no power levels event
			depthOf[id] = d
		}
		return d, nil
	}
	depth := make(map[string]int, len(evs))
	for _, ev := range evs {
		d, err := mainlineDepth(ev)
		if err != nil {
			return err
		}
		depth[ev.EventID()] = d
	}
	slices.SortFunc(evs, func(a, b *Event) int {
		return cmp.Or(
			cmp.Compare(depth[a.EventID()], depth[b.EventID()]),
			cmp.Compare(a.OriginServerTS(), b.OriginServerTS()),
			strings.Compare(a.EventID(), b.EventID()),
		)
	})
	return nil
}

// iterativeAuthChecks applies the events in order to state, each one only
// if the auth rules allow it against state, falling back to the event's
// own (not rejected) auth events for keys state lacks.
func (s *eventSource) iterativeAuthChecks(ctx context.Context, state StateMap, evs []*Event) error {
	create, err := s.createEvent(ctx)
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if isRejected(ev) || !ev.IsState() {
			continue
		}
		if err := s.loadIDs(ctx, ev.AuthEventIDs()); err != nil {
			return err
		}
		var pdus []gomatrixserverlib.PDU
		for _, a := range ev.AuthEventIDs() {
			if ae := s.byID[a]; ae != nil && !isRejected(ae) && ae.IsState() {
				pdus = append(pdus, ae.PDU)
			}
		}
		fromState, err := s.authEventsFromState(ctx, ev, state)
		if err != nil {
			return err
		}
		pdus = append(pdus, fromState...)
		if ev.Type() != spec.MRoomCreate && create != nil {
			pdus = slices.Insert(pdus, 0, create.PDU) // v12 events do not cite it
		}
		provider, err := gomatrixserverlib.NewAuthEvents(pdus)
		if err != nil {
			continue
		}
		if gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender) == nil {
			state[ev.Key()] = ev.NID
		}
	}
	return nil
}

// authEventsFromState returns the events of state that the auth rules
// consult for ev (rejected ones left out).
func (s *eventSource) authEventsFromState(ctx context.Context, ev *Event, state StateMap) ([]gomatrixserverlib.PDU, error) {
	tuples := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev.PDU}).Tuples()
	tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate})
	nids := make([]int64, 0, len(tuples))
	for _, t := range tuples {
		if nid, ok := state[StateKey{t.EventType, t.StateKey}]; ok {
			nids = append(nids, nid)
		}
	}
	if err := s.loadNIDs(ctx, nids); err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(nids))
	for _, nid := range nids {
		if ae := s.byNID[nid]; ae != nil && !isRejected(ae) {
			out = append(out, ae.PDU)
		}
	}
	return out, nil
}

// allowedByState checks ev against the auth rules with the auth events a
// state provides.
func (s *eventSource) allowedByState(ctx context.Context, ev *Event, state StateMap) error {
	pdus, err := s.authEventsFromState(ctx, ev, state)
	if err != nil {
		return err
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return err
	}
	return gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender)
}

// AuthChain returns the auth chains of the given events of a room — every
// event reachable through auth_events, without the given events
// themselves — ordered by depth, as /send_join, /state and /event_auth
// answer them. Unknown events are skipped.
func (e *Engine) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]*Event, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	s := e.newEventSource(ri)
	if err := s.loadIDs(ctx, eventIDs); err != nil {
		return nil, err
	}
	var roots []*Event
	for _, id := range eventIDs {
		if ev := s.byID[id]; ev != nil {
			roots = append(roots, ev)
		}
	}
	chain, err := s.authChain(ctx, roots, nil)
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(chain))
	for _, ev := range chain {
		out = append(out, ev)
	}
	slices.SortFunc(out, func(a, b *Event) int {
		return cmp.Or(cmp.Compare(a.Depth(), b.Depth()), strings.Compare(a.EventID(), b.EventID()))
	})
	return out, nil
}

// ForwardExtremities returns the room's forward extremities: the events
// new local events build on (and the latest_events of a
// /get_missing_events request).
func (e *Engine) ForwardExtremities(ctx context.Context, roomID string) ([]string, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return slices.Clone(ri.extremities), nil
}

// StateAfterEvents returns the state a new event with the given
// prev_events would see: the resolution of the states after each of them
// (soft-failed state events count, rejected ones do not). Every event must
// be stored with its state (not as an outlier).
func (e *Engine) StateAfterEvents(ctx context.Context, roomID string, eventIDs []string) (StateMap, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	s := e.newEventSource(ri)
	if err := s.loadIDs(ctx, eventIDs); err != nil {
		return nil, err
	}
	sets := make([]StateMap, 0, len(eventIDs))
	for _, id := range eventIDs {
		ev := s.byID[id]
		if ev == nil || !hasState(ev) {
			return nil, fmt.Errorf("event %s: %w", id, ErrStateUnknown)
		}
		before, err := e.loadSnapshot(ctx, ev.StateBefore)
		if err != nil {
			return nil, err
		}
		sets = append(sets, applyEvent(&stateAt{m: before}, ev).m)
	}
	return s.resolveState(ctx, sets)
}
