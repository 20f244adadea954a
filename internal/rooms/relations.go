package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Relationship types the server aggregates.
const (
	RelThread    = "m.thread"
	RelReplace   = "m.replace"
	RelReference = "m.reference"
)

// Pagination limits of /relations (Synapse's default) .
const (
	defaultRelationsLimit = 5
	maxRelationsLimit     = 1000
)

// relationsRecursionDepth is how many levels of relations recurse=true
// follows (the spec asks for at least 3; Synapse uses 3).
const relationsRecursionDepth = 3

// RelationsResponse is the answer of GET /rooms/{roomId}/relations/….
type RelationsResponse struct {
	Chunk          []ClientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch,omitempty"`
	PrevBatch      string        `json:"prev_batch,omitempty"`
	RecursionDepth *int          `json:"recursion_depth,omitempty"`
}

// handleRelations serves the children of an event, optionally of one
// relationship type and event type, newest first by default. Redacted
// children no longer relate to their parent and are left out.
func (e *Engine) handleRelations(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	pp, err := parsePageParams(q, "b", defaultRelationsLimit, maxRelationsLimit)
	if err != nil {
		return nil, err
	}
	var recurse *bool
	if q.Has("recurse") {
		b, err := httpx.QueryBool(r, "recurse", false)
		if err != nil {
			return nil, err
		}
		recurse = &b
	}
	ctx := r.Context()
	w, err := e.readWindow(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	rc := e.newReader(p, w)
	parent, err := rc.visibleEvent(ctx, r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	rel := relationsQuery{roomID: roomID, parent: parent.EventID(), relType: r.PathValue("relType"), eventType: r.PathValue("eventType")}
	if recurse != nil && *recurse {
		rel.depth = relationsRecursionDepth
	}
	pg := &pager{back: pp.back, from: pp.from, to: pp.to, limit: pp.limit, query: rel.sql(pp.back),
		keep: func(ev *Event) (bool, error) { return rc.canSee(ctx, ev) }}
	if pp.back {
		pg.from = min(pg.from, w.maxPos)
	} else {
		pg.to = min(pg.to, w.maxPos)
	}
	evs, next, more, err := e.page(ctx, w.ri, pg)
	if err != nil {
		return nil, err
	}
	resp := &RelationsResponse{}
	if resp.Chunk, err = rc.clientEvents(ctx, evs); err != nil {
		return nil, err
	}
	if more {
		resp.NextBatch = Token(next)
	}
	if pp.hasFrom {
		resp.PrevBatch = q.Get("from")
	}
	if recurse != nil {
		depth := 1
		if *recurse {
			depth = relationsRecursionDepth
		}
		resp.RecursionDepth = &depth
	}
	return resp, nil
}

// Queries that look children up by relates_to write "room_id || ''" and
// "stream_pos + 0" so that no index applies to those columns: without
// table statistics SQLite would otherwise walk the whole room through the
// (room_id, stream_pos) index instead of finding the few children through
// events_relates.

// relationsQuery selects the children of an event.
type relationsQuery struct {
	roomID, parent     string
	relType, eventType string // "" for any
	depth              int    // levels of relations of relations to follow (0: direct children only)
}

// sql returns the pager query of the children.
func (rq relationsQuery) sql(back bool) func(cursor, far int64, n int) (string, sqlArgs) {
	return func(cursor, far int64, n int) (string, sqlArgs) {
		var a sqlArgs
		room := a.add(rq.roomID)
		var q string
		if rq.depth > 1 {
			q = `WITH RECURSIVE ev(nid, event_id, stream_pos, rel_type, type, lvl) AS (
				SELECT nid, event_id, stream_pos, rel_type, type, 1 FROM events
				WHERE relates_to = ` + a.add(rq.parent) + ` AND room_id || '' = ` + room + ` AND status = 0 AND redacted_by IS NULL
				UNION ALL
				SELECT c.nid, c.event_id, c.stream_pos, c.rel_type, c.type, ev.lvl + 1 FROM events c JOIN ev ON c.relates_to = ev.event_id
				WHERE ev.lvl < ` + a.add(rq.depth) + ` AND c.room_id || '' = ` + room + ` AND c.status = 0 AND c.redacted_by IS NULL
			)
			SELECT ev.nid, ev.stream_pos FROM ev WHERE ev.lvl > 0`
		} else {
			q = `SELECT ev.nid, ev.stream_pos FROM events ev WHERE ev.relates_to = ` + a.add(rq.parent) + ` AND ev.room_id || '' = ` + room +
				` AND ev.status = 0 AND ev.redacted_by IS NULL`
		}
		if rq.relType != "" {
			q += ` AND ev.rel_type = ` + a.add(rq.relType)
		}
		if rq.eventType != "" {
			q += ` AND ev.type = ` + a.add(rq.eventType)
		}
		where, order := boundsSQL(&a, "(ev.stream_pos + 0)", back, cursor, far, n)
		return q + where + order, a
	}
}

// BundleAggregations adds the bundled aggregations (unsigned["m.relations"]:
// m.thread, m.replace, m.reference) to ces, the client forms of evs, as
// seen by userID. It is for endpoints outside this file that serve events
// (GET /event, /sync with a limited timeline); the events must be of one
// room.
func (e *Engine) BundleAggregations(ctx context.Context, userID, deviceID string, evs []*Event, ces []ClientEvent) error {
	if len(evs) == 0 {
		return nil
	}
	ri, err := e.room(ctx, evs[0].RoomID().String())
	if err != nil {
		return err
	}
	// The caller decided that the user may see evs; the window only keeps
	// children after a user's leave out of the aggregations.
	w, _, err := e.windowFor(ctx, ri, userID)
	if err != nil {
		return err
	}
	rc := e.newReader(&httpx.Principal{UserID: userID, DeviceID: deviceID}, w)
	return rc.bundle(ctx, evs, ces, false)
}

// relationGroup is the aggregate of one parent's children of one type.
type relationGroup struct {
	count        int
	latestPos    int64
	participated bool
}

// bundle adds bundled aggregations to ces (the client forms of evs).
// nested is set for the latest events of threads, which get their own
// edits and references but not threads (they cannot have any).
func (rc *reader) bundle(ctx context.Context, evs []*Event, ces []ClientEvent, nested bool) error {
	idx := map[string]int{}
	var ids []string
	for i, ev := range evs {
		// State events get no bundled aggregations (see the spec's warning).
		if !ev.IsState() {
			idx[ev.EventID()] = i
			ids = append(ids, ev.EventID())
		}
	}
	if len(ids) == 0 {
		return nil
	}
	groups, err := rc.relationGroups(ctx, ids)
	if err != nil {
		return err
	}
	if len(groups) == 0 {
		return nil
	}
	rels := make([]map[string]any, len(evs))
	add := func(parent, relType string, v any) {
		i := idx[parent]
		if rels[i] == nil {
			rels[i] = map[string]any{}
		}
		rels[i][relType] = v
	}
	if !nested {
		if err := rc.bundleThreads(ctx, evs, idx, groups[RelThread], add); err != nil {
			return err
		}
	}
	if len(groups[RelReplace])+len(groups[RelReference]) > 0 {
		if err := rc.bundleEditsAndReferences(ctx, evs, idx, add); err != nil {
			return err
		}
	}
	for i, m := range rels {
		if m == nil {
			continue
		}
		if ces[i].Unsigned == nil {
			ces[i].Unsigned = map[string]any{}
		}
		ces[i].Unsigned["m.relations"] = m
	}
	return nil
}

// relationGroups aggregates the readable, unredacted children of the
// parents ids per relationship type and parent.
func (rc *reader) relationGroups(ctx context.Context, ids []string) (map[string]map[string]*relationGroup, error) {
	var a sqlArgs
	q := `SELECT relates_to, rel_type, COUNT(*), MAX(stream_pos), MAX(CASE WHEN sender = ` + a.add(rc.userID) + ` THEN 1 ELSE 0 END)
		FROM events WHERE room_id || '' = ` + a.add(rc.w.ri.id) + ` AND relates_to IN (` + a.list(ids) + `)
		AND rel_type IN ('` + RelThread + `', '` + RelReplace + `', '` + RelReference + `')
		AND status = 0 AND redacted_by IS NULL AND stream_pos + 0 <= ` + a.add(rc.w.maxPos) + `
		GROUP BY relates_to, rel_type`
	rows, err := rc.e.db.Query(ctx, q, a...)
	if err != nil {
		return nil, fmt.Errorf("relation groups: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]*relationGroup{}
	for rows.Next() {
		var parent, relType string
		var g relationGroup
		var part int
		if err := rows.Scan(&parent, &relType, &g.count, &g.latestPos, &part); err != nil {
			return nil, err
		}
		g.participated = part == 1
		if out[relType] == nil {
			out[relType] = map[string]*relationGroup{}
		}
		out[relType][parent] = &g
	}
	return out, rows.Err()
}

// bundleThreads adds the m.thread aggregations of the thread roots among
// evs: the latest event (with its own aggregations), the count, and
// whether the user took part (sent the root or a reply).
func (rc *reader) bundleThreads(ctx context.Context, evs []*Event, idx map[string]int, threads map[string]*relationGroup, add func(parent, relType string, v any)) error {
	if len(threads) == 0 {
		return nil
	}
	var a sqlArgs
	q := `SELECT nid, stream_pos FROM events WHERE room_id = ` + a.add(rc.w.ri.id) + ` AND rel_type = '` + RelThread + `' AND stream_pos IN (`
	for _, g := range threads {
		q += a.add(g.latestPos) + ","
	}
	nids, _, err := rc.e.nidKeys(ctx, q[:len(q)-1]+`)`, a)
	if err != nil {
		return err
	}
	latest, err := rc.e.EventsByNID(ctx, rc.w.ri.version, nids)
	if err != nil {
		return err
	}
	var visible []*Event
	for _, ev := range latest {
		if ok, err := rc.canSee(ctx, ev); err != nil {
			return err
		} else if ok {
			visible = append(visible, ev)
		}
	}
	ces, err := rc.e.ClientEvents(ctx, visible, rc.userID, rc.device)
	if err != nil {
		return err
	}
	if err := rc.bundle(ctx, visible, ces, true); err != nil {
		return err
	}
	for i, ev := range visible {
		root, _ := relationOf(ev.Content())
		rootID, _ := root.(string)
		g := threads[rootID]
		if g == nil {
			continue
		}
		participated := g.participated || evs[idx[rootID]].SenderID() == spec.SenderID(rc.userID)
		add(rootID, RelThread, map[string]any{"latest_event": ces[i], "count": g.count, "current_user_participated": participated})
	}
	return nil
}

// bundleEditsAndReferences adds the m.replace aggregation (the most recent
// valid edit) and the m.reference aggregation (the referencing event IDs)
// of evs.
func (rc *reader) bundleEditsAndReferences(ctx context.Context, evs []*Event, idx map[string]int, add func(parent, relType string, v any)) error {
	var a sqlArgs
	ids := make([]string, 0, len(idx))
	for id := range idx {
		ids = append(ids, id)
	}
	q := `SELECT nid, stream_pos FROM events WHERE room_id || '' = ` + a.add(rc.w.ri.id) + ` AND relates_to IN (` + a.list(ids) + `)
		AND rel_type IN ('` + RelReplace + `', '` + RelReference + `') AND status = 0 AND redacted_by IS NULL
		AND stream_pos + 0 <= ` + a.add(rc.w.maxPos) + ` ORDER BY stream_pos`
	nids, _, err := rc.e.nidKeys(ctx, q, a)
	if err != nil {
		return err
	}
	children, err := rc.e.EventsByNID(ctx, rc.w.ri.version, nids)
	if err != nil {
		return err
	}
	edits := map[string]*Event{}
	refs := map[string][]map[string]string{}
	for _, c := range children {
		if ok, err := rc.canSee(ctx, c); err != nil {
			return err
		} else if !ok {
			continue
		}
		parentID, relType := relationOf(c.Content())
		pid, _ := parentID.(string)
		i, ok := idx[pid]
		if !ok {
			continue
		}
		switch relType {
		case RelReference:
			refs[pid] = append(refs[pid], map[string]string{"event_id": c.EventID()})
		case RelReplace:
			if validEdit(evs[i], c) && newerEdit(c, edits[pid]) {
				edits[pid] = c
			}
		}
	}
	for pid, chunk := range refs {
		add(pid, RelReference, map[string]any{"chunk": chunk})
	}
	parents := make([]string, 0, len(edits))
	for pid := range edits {
		parents = append(parents, pid)
	}
	sort.Strings(parents)
	for _, pid := range parents {
		ce, err := rc.e.ClientEvent(ctx, edits[pid], rc.userID, rc.device)
		if err != nil {
			return err
		}
		add(pid, RelReplace, ce)
	}
	return nil
}

// validEdit applies the spec's validity rules of replacement events: same
// sender and type as the original, neither a state event, the original not
// redacted and not itself an edit, and (unencrypted) m.new_content present.
func validEdit(orig, edit *Event) bool {
	if orig.RedactedBy != "" || orig.IsState() || edit.IsState() ||
		orig.SenderID() != edit.SenderID() || orig.Type() != edit.Type() {
		return false
	}
	if _, rt := relationOf(orig.Content()); rt == RelReplace {
		return false
	}
	if edit.Type() == "m.room.encrypted" {
		return true
	}
	var c struct {
		NewContent map[string]json.RawMessage `json:"m.new_content"`
	}
	return json.Unmarshal(edit.Content(), &c) == nil && c.NewContent != nil
}

// newerEdit reports whether edit is more recent than cur (nil: none): by
// origin_server_ts, then by the lexicographically larger event ID.
func newerEdit(edit, cur *Event) bool {
	if cur == nil {
		return true
	}
	if edit.OriginServerTS() != cur.OriginServerTS() {
		return edit.OriginServerTS() > cur.OriginServerTS()
	}
	return edit.EventID() > cur.EventID()
}

// Pagination limits of /threads (Synapse's).
const (
	defaultThreadsLimit = 5
	maxThreadsLimit     = 100
)

// ThreadsResponse is the answer of GET /rooms/{roomId}/threads.
type ThreadsResponse struct {
	Chunk     []ClientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch,omitempty"`
}

// handleThreads lists the thread roots of a room (events with at least one
// m.thread child), most recently active first. The token is the stream
// position of the latest reply of the last root returned, minus one.
func (e *Engine) handleThreads(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	include := q.Get("include")
	switch include {
	case "", "all", "participated":
	default:
		return nil, httpx.InvalidParam("include must be all or participated, not %q", include)
	}
	limit, err := parseLimit(q, "limit", defaultThreadsLimit, maxThreadsLimit)
	if err != nil {
		return nil, err
	}
	if q.Has("limit") && limit == 0 {
		return nil, httpx.InvalidParam("limit must be greater than zero")
	}
	from := int64(math.MaxInt64)
	if s := q.Get("from"); s != "" {
		if from, err = ParseStreamPos(s); err != nil {
			return nil, err
		}
	}
	ctx := r.Context()
	w, err := e.readWindow(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	rc := e.newReader(p, w)
	query := func(cursor, far int64, n int) (string, sqlArgs) {
		var a sqlArgs
		room := a.add(roomID)
		q := `SELECT root.nid, MAX(c.stream_pos) FROM events c JOIN events root ON root.event_id = c.relates_to
			WHERE c.room_id = ` + room + ` AND c.rel_type = '` + RelThread + `' AND c.status = 0 AND c.redacted_by IS NULL
			AND c.stream_pos <= ` + a.add(w.maxPos) + ` AND root.room_id = ` + room + ` AND root.status = 0`
		if include == "participated" {
			user := a.add(p.UserID)
			q += ` AND (root.sender = ` + user + ` OR EXISTS (SELECT 1 FROM events m WHERE m.relates_to = c.relates_to
				AND m.rel_type = '` + RelThread + `' AND m.sender = ` + user + ` AND m.status = 0 AND m.redacted_by IS NULL))`
		}
		return q + ` GROUP BY root.nid HAVING MAX(c.stream_pos) <= ` + a.add(cursor) + ` AND MAX(c.stream_pos) > ` + a.add(far) +
			` ORDER BY MAX(c.stream_pos) DESC LIMIT ` + a.add(n), a
	}
	evs, next, more, err := e.page(ctx, w.ri, &pager{back: true, from: from, to: math.MinInt64, limit: limit, query: query,
		keep: func(ev *Event) (bool, error) { return rc.canSee(ctx, ev) }})
	if err != nil {
		return nil, err
	}
	resp := &ThreadsResponse{}
	if resp.Chunk, err = rc.clientEvents(ctx, evs); err != nil {
		return nil, err
	}
	if more {
		resp.NextBatch = Token(next)
	}
	return resp, nil
}
