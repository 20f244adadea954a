package rooms

// Reading room history (client-server API, "Room participation",
// "Event relationships", "Threading"):
//
//	GET /v3/rooms/{roomId}/messages                          messages.go
//	GET /v1/rooms/{roomId}/timestamp_to_event                messages.go
//	GET /v3/rooms/{roomId}/context/{eventId}                 context.go
//	GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]
//	GET /v1/rooms/{roomId}/threads                           relations.go
//
// Events are ordered by their global stream position (events.stream_pos;
// backfilled events will take negative positions, so they sort before the
// room's local history). A pagination token "s<pos>" is the boundary just
// after position pos: paginating backwards from it returns the events at
// positions <= pos, newest first; forwards, the events at positions > pos,
// oldest first. /sync's tokens start with the same "s<pos>_", so a sync
// next_batch or prev_batch works as a `from` here.
//
// Who may read: joined users read the whole history that history
// visibility lets them see; users who left or were banned read up to
// their leave event; anyone reads a world-readable room; everyone else
// gets 403 M_FORBIDDEN (as Synapse).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

func (e *Engine) readRoutes(rt *httpx.Router) {
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/messages", e.handleMessages)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}", e.handleContext)
	rt.AuthedGuestOK("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}", e.handleRelations)
	rt.AuthedGuestOK("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}", e.handleRelations)
	rt.AuthedGuestOK("GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", e.handleRelations)
	rt.AuthedGuestOK("GET /_matrix/client/v1/rooms/{roomId}/threads", e.handleThreads)
	rt.Authed("GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event", e.handleTimestampToEvent)
}

// Pagination limits of /messages and /context.
const (
	defaultMessagesLimit = 10
	maxMessagesLimit     = 1000
)

// Token returns the pagination token of the boundary just after stream
// position pos.
func Token(pos int64) string { return "s" + strconv.FormatInt(pos, 10) }

// window is the part of a room's timeline a user may read.
type window struct {
	ri     *roomInfo
	maxPos int64 // last readable stream position (math.MaxInt64: no limit)
	// lastJoinPos is, for a user who left, the position of their join
	// before they left (math.MinInt64 if they were not joined then).
	lastJoinPos int64
}

// readWindow checks that userID may read roomID's history and returns up
// to where: 403 M_FORBIDDEN for unknown rooms and for users who are not
// (and were never) in a room that is not world-readable.
func (e *Engine) readWindow(ctx context.Context, roomID, userID string) (*window, error) {
	ri, err := e.room(ctx, roomID)
	if errors.Is(err, ErrRoomNotFound) {
		return nil, httpx.Forbidden("You are not in this room")
	}
	if err != nil {
		return nil, err
	}
	w, allowed, err := e.windowFor(ctx, ri, userID)
	if err != nil {
		return nil, err
	}
	if !allowed {
		return nil, httpx.Forbidden("You are not in this room")
	}
	return w, nil
}

// windowFor computes a user's window in a room, and whether they may page
// through its history at all: joined users and anyone in a world-readable
// room without limit, users who left or were banned up to their leave.
func (e *Engine) windowFor(ctx context.Context, ri *roomInfo, userID string) (*window, bool, error) {
	w := &window{ri: ri, maxPos: math.MaxInt64, lastJoinPos: math.MinInt64}
	mem, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomMember, userID)
	if err != nil {
		return nil, false, err
	}
	membership := spec.Leave
	if mem != nil {
		membership, _ = mem.Membership()
	}
	if membership == spec.Join {
		return w, true, nil
	}
	hv, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return nil, false, err
	}
	if hv != nil {
		if h, _ := hv.HistoryVisibility(); string(h) == VisWorldReadable {
			return w, true, nil
		}
	}
	if mem != nil && (membership == spec.Leave || membership == spec.Ban) {
		if forgot, err := e.IsForgotten(ctx, userID, ri.id); err != nil || forgot {
			return nil, false, err
		}
		w.maxPos = mem.Pos
		before, err := e.loadSnapshot(ctx, mem.StateBefore)
		if err != nil {
			return nil, false, err
		}
		prev, err := e.stateEvent(ctx, ri, before, spec.MRoomMember, userID)
		if err != nil {
			return nil, false, err
		}
		if prev != nil {
			if m, _ := prev.Membership(); m == spec.Join {
				w.lastJoinPos = prev.Pos
			}
		}
		return w, true, nil
	}
	return w, false, nil
}

// sqlArgs numbers the placeholders of a query built piece by piece.
type sqlArgs []any

// add appends a value and returns its placeholder.
func (a *sqlArgs) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// list appends values and returns their comma-separated placeholders.
func (a *sqlArgs) list(vs []string) string {
	ph := make([]string, len(vs))
	for i, v := range vs {
		ph[i] = a.add(v)
	}
	return strings.Join(ph, ",")
}

// pager walks a sequence of events ordered by a stream position key
// (usually the events' own positions), keeping those that pass keep, until
// limit events are kept or the sequence ends.
type pager struct {
	back  bool  // walk towards lower positions
	from  int64 // boundary to start at (see the file comment)
	to    int64 // boundary to stop at
	limit int
	// query returns SQL selecting (nid, key) rows strictly beyond the
	// boundary cursor and not beyond the boundary far, in walk order, at
	// most n rows.
	query func(cursor, far int64, n int) (string, sqlArgs)
	keep  func(*Event) (bool, error)
}

// maxPageScan bounds the rows one page examines, so that a filter matching
// nothing cannot make one request read a whole room; the client goes on
// from the returned token.
const maxPageScan = 5000

// page runs p and returns the kept events in walk order, the boundary after
// the last row examined, and whether rows remain beyond it.
func (e *Engine) page(ctx context.Context, ri *roomInfo, p *pager) ([]*Event, int64, bool, error) {
	cursor := p.from
	var out []*Event
	if p.limit <= 0 {
		return out, cursor, true, nil
	}
	batch := p.limit + 1
	for scanned := 0; scanned < maxPageScan; batch = min(batch*2, 500) {
		query, args := p.query(cursor, p.to, batch+1)
		nids, keys, err := e.nidKeys(ctx, query, args)
		if err != nil {
			return nil, 0, false, err
		}
		exhausted := len(nids) <= batch
		if !exhausted {
			nids, keys = nids[:batch], keys[:batch]
		}
		evs, err := e.EventsByNID(ctx, ri.version, nids)
		if err != nil {
			return nil, 0, false, err
		}
		byNID := make(map[int64]*Event, len(evs))
		for _, ev := range evs {
			byNID[ev.NID] = ev
		}
		for i, nid := range nids {
			if p.back {
				cursor = keys[i] - 1
			} else {
				cursor = keys[i]
			}
			scanned++
			ev := byNID[nid]
			if ev == nil {
				continue
			}
			ok, err := p.keep(ev)
			if err != nil {
				return nil, 0, false, err
			}
			if !ok {
				continue
			}
			out = append(out, ev)
			if len(out) == p.limit {
				return out, cursor, !exhausted || i < len(nids)-1, nil
			}
		}
		if exhausted {
			return out, cursor, false, nil
		}
	}
	return out, cursor, true, nil
}

// nidKeys runs a query selecting (nid, key) rows.
func (e *Engine) nidKeys(ctx context.Context, query string, args sqlArgs) ([]int64, []int64, error) {
	rows, err := e.db.Query(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("page: %w", err)
	}
	defer rows.Close()
	var nids, keys []int64
	for rows.Next() {
		var nid, key int64
		if err := rows.Scan(&nid, &key); err != nil {
			return nil, nil, err
		}
		nids, keys = append(nids, nid), append(keys, key)
	}
	return nids, keys, rows.Err()
}

// boundsSQL returns the WHERE conditions (with leading AND) and ORDER BY …
// LIMIT clause that restrict column col to the positions strictly beyond
// cursor and not beyond far, in walk order.
func boundsSQL(a *sqlArgs, col string, back bool, cursor, far int64, n int) (where, order string) {
	if back {
		return " AND " + col + " <= " + a.add(cursor) + " AND " + col + " > " + a.add(far),
			" ORDER BY " + col + " DESC LIMIT " + a.add(n)
	}
	return " AND " + col + " > " + a.add(cursor) + " AND " + col + " <= " + a.add(far),
		" ORDER BY " + col + " ASC LIMIT " + a.add(n)
}

// timelinePager pages the accepted events of the window's room.
func timelinePager(w *window, back bool, from, to int64, limit int, keep func(*Event) (bool, error)) *pager {
	p := &pager{back: back, from: from, to: to, limit: limit, keep: keep}
	if back {
		p.from = min(from, w.maxPos)
	} else {
		p.to = min(to, w.maxPos)
	}
	p.query = func(cursor, far int64, n int) (string, sqlArgs) {
		var a sqlArgs
		q := `SELECT nid, stream_pos FROM events WHERE room_id = ` + a.add(w.ri.id) + ` AND status = 0`
		where, order := boundsSQL(&a, "stream_pos", back, cursor, far, n)
		return q + where + order, a
	}
	return p
}

// pageParams are the query parameters shared by the paginated endpoints.
type pageParams struct {
	back     bool
	from, to int64
	hasFrom  bool
	limit    int
}

// parsePageParams reads dir (default defDir), from, to and limit (default
// defLimit, capped at maxLimit). Unset bounds are the ends of the timeline.
func parsePageParams(q url.Values, defDir string, defLimit, maxLimit int) (pageParams, error) {
	var pp pageParams
	switch dir := q.Get("dir"); dir {
	case "b":
		pp.back = true
	case "f":
	case "":
		pp.back = defDir == "b"
	default:
		return pp, httpx.InvalidParam("dir must be b or f, not %q", dir)
	}
	pp.from, pp.to = math.MinInt64, math.MaxInt64
	if pp.back {
		pp.from, pp.to = math.MaxInt64, math.MinInt64
	}
	var err error
	if s := q.Get("from"); s != "" {
		if pp.from, err = ParseStreamPos(s); err != nil {
			return pp, err
		}
		pp.hasFrom = true
	}
	if s := q.Get("to"); s != "" {
		if pp.to, err = ParseStreamPos(s); err != nil {
			return pp, err
		}
	}
	pp.limit, err = parseLimit(q, "limit", defLimit, maxLimit)
	return pp, err
}

// parseLimit reads a non-negative integer parameter, def when absent,
// capped at maxLimit.
func parseLimit(q url.Values, name string, def, maxLimit int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, httpx.InvalidParam("%s must be a non-negative integer", name)
	}
	return min(n, maxLimit), nil
}

// currentPos is the last committed global stream position.
func (e *Engine) currentPos(ctx context.Context) (int64, error) {
	var pos int64
	err := e.db.QueryRow(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&pos)
	return pos, err
}

// firstPos is the boundary before the room's first event.
func (e *Engine) firstPos(ctx context.Context, roomID string) (int64, error) {
	var pos int64
	err := e.db.QueryRow(ctx, `SELECT COALESCE(MIN(stream_pos), 1) FROM events WHERE room_id = $1`, roomID).Scan(&pos)
	return pos - 1, err
}

// MessagesResponse is the answer of GET /rooms/{roomId}/messages.
type MessagesResponse struct {
	Start string        `json:"start"`
	End   string        `json:"end,omitempty"`
	Chunk []ClientEvent `json:"chunk"`
	State []ClientEvent `json:"state,omitempty"`
}

func (e *Engine) handleMessages(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	pp, err := parsePageParams(q, "b", defaultMessagesLimit, maxMessagesLimit)
	if err != nil {
		return nil, err
	}
	f, err := parseEventFilter(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	// The filter's limit applies too: alone when the query has none.
	if f.Limit != nil && *f.Limit > 0 {
		if q.Get("limit") == "" {
			pp.limit = min(*f.Limit, maxMessagesLimit)
		} else {
			pp.limit = min(pp.limit, *f.Limit)
		}
	}
	ctx := r.Context()
	w, err := e.readWindow(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	if !pp.hasFrom {
		if pp.back {
			if pp.from, err = e.currentPos(ctx); err != nil {
				return nil, err
			}
		} else if pp.from, err = e.firstPos(ctx, roomID); err != nil {
			return nil, err
		}
	}
	resp := &MessagesResponse{Start: Token(pp.from)}
	if pp.back && pp.from > w.maxPos {
		resp.Start = Token(w.maxPos)
	}
	rc := e.newReader(p, w)
	keep := rc.keepMatching(ctx, f)
	evs, next, more, err := e.page(ctx, w.ri, timelinePager(w, pp.back, pp.from, pp.to, pp.limit, keep))
	if err == nil && pp.back && !more && len(evs) < pp.limit {
		evs, next, more, err = e.pageWithBackfill(ctx, w, pp, keep, evs, next)
	}
	if err != nil {
		return nil, err
	}
	if more {
		resp.End = Token(next)
	}
	if resp.Chunk, err = rc.clientEvents(ctx, evs); err != nil {
		return nil, err
	}
	if f.LazyLoadMembers && len(evs) > 0 {
		state, err := e.StateAt(ctx, evs[0], true)
		if err != nil {
			return nil, err
		}
		members, err := e.senderMembers(ctx, w.ri, state, evs)
		if err != nil {
			return nil, err
		}
		if resp.State, err = e.ClientEvents(ctx, members, p.UserID, p.DeviceID); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// senderMembers returns the member events, in state, of the senders of evs.
func (e *Engine) senderMembers(ctx context.Context, ri *roomInfo, state StateMap, evs []*Event) ([]*Event, error) {
	seen := map[string]bool{}
	var nids []int64
	for _, ev := range evs {
		sender := string(ev.SenderID())
		if seen[sender] {
			continue
		}
		seen[sender] = true
		if nid, ok := state[StateKey{spec.MRoomMember, sender}]; ok {
			nids = append(nids, nid)
		}
	}
	return e.EventsByNID(ctx, ri.version, nids)
}

// reader carries what one read request needs to decide and format what a
// user sees: their window, a visibility checker and their device.
type reader struct {
	e      *Engine
	w      *window
	vis    *Visibility
	userID string
	device string
}

func (e *Engine) newReader(p *httpx.Principal, w *window) *reader {
	return &reader{e: e, w: w, vis: e.NewVisibility(p.UserID), userID: p.UserID, device: p.DeviceID}
}

// canSee reports whether the user may see ev: inside their window and
// allowed by history visibility.
//
// Visibility.CanSee lets users see "shared" history only while they are
// joined; the spec also lets a user who left see the shared history from
// before their last join ("they may see any events which they were allowed
// to see before they left the room"), which canSee adds.
func (rc *reader) canSee(ctx context.Context, ev *Event) (bool, error) {
	if ev.Status != StatusAccepted || ev.Pos > rc.w.maxPos {
		return false, nil
	}
	ok, err := rc.vis.CanSee(ctx, ev)
	if ok || err != nil || ev.Pos >= rc.w.lastJoinPos {
		return ok, err
	}
	at, err := rc.vis.at(ctx, ev)
	return at.visibility == VisShared, err
}

// keepMatching returns a pager keep func: visible events that match f.
func (rc *reader) keepMatching(ctx context.Context, f *eventFilter) func(*Event) (bool, error) {
	return func(ev *Event) (bool, error) {
		if !f.matches(ev) {
			return false, nil
		}
		return rc.canSee(ctx, ev)
	}
}

// clientEvents formats events for the user, with bundled aggregations.
func (rc *reader) clientEvents(ctx context.Context, evs []*Event) ([]ClientEvent, error) {
	ces, err := rc.e.ClientEvents(ctx, evs, rc.userID, rc.device)
	if err != nil {
		return nil, err
	}
	if err := rc.bundle(ctx, evs, ces, false); err != nil {
		return nil, err
	}
	return ces, nil
}

// timestampCandidates bounds the events timestamp_to_event examines for
// one that the user may see.
const timestampCandidates = 50

func (e *Engine) handleTimestampToEvent(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	if q.Get("ts") == "" {
		return nil, httpx.MissingParam("ts is required")
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return nil, httpx.InvalidParam("ts must be an integer")
	}
	dir := q.Get("dir")
	cmp, order := ">=", "ASC"
	switch dir {
	case "f":
	case "b":
		cmp, order = "<=", "DESC"
	case "":
		return nil, httpx.MissingParam("dir is required")
	default:
		return nil, httpx.InvalidParam("dir must be b or f, not %q", dir)
	}
	ctx := r.Context()
	w, err := e.readWindow(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	query := `SELECT nid, stream_pos FROM events WHERE room_id = $1 AND status = 0 AND stream_pos <= $2 AND origin_server_ts ` + cmp +
		` $3 ORDER BY origin_server_ts ` + order + `, stream_pos ` + order + ` LIMIT $4`
	nids, _, err := e.nidKeys(ctx, query, sqlArgs{roomID, w.maxPos, ts, timestampCandidates})
	if err != nil {
		return nil, err
	}
	evs, err := e.EventsByNID(ctx, w.ri.version, nids)
	if err != nil {
		return nil, err
	}
	rc := e.newReader(p, w)
	for _, ev := range evs {
		if ok, err := rc.canSee(ctx, ev); err != nil {
			return nil, err
		} else if ok {
			return map[string]any{"event_id": ev.EventID(), "origin_server_ts": int64(ev.OriginServerTS())}, nil
		}
	}
	word := "forward"
	if dir == "b" {
		word = "backward"
	}
	return nil, httpx.NotFound("Unable to find event from %d in %s direction", ts, word)
}
