package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/rooms"
)

// evalBatch is the most events one evaluator transaction covers.
const evalBatch = 200

// progress is the stream position up to which the evaluator has looked,
// with a way to wait for it.
type progress struct {
	mu      sync.Mutex
	covered int64
	ch      chan struct{} // closed when covered advances
}

func (p *progress) init() { p.ch = make(chan struct{}) }

// advance raises the covered position and wakes the waiters.
func (p *progress) advance(pos int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pos <= p.covered {
		return
	}
	p.covered = pos
	close(p.ch)
	p.ch = make(chan struct{})
}

// get returns the covered position and a channel closed when it advances.
func (p *progress) get() (int64, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.covered, p.ch
}

// waitCovered waits until the evaluator has covered pos, ctx ends or the
// timeout passes; it reports whether pos was reached.
func (s *Service) waitCovered(ctx context.Context, pos int64, timeout time.Duration) bool {
	covered, ch := s.progress.get()
	if covered >= pos {
		return true
	}
	s.Wake()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-ch:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
		if covered, ch = s.progress.get(); covered >= pos {
			return true
		}
	}
}

// storedPosition is the evaluator's durable position.
func (s *Service) storedPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.QueryRow(ctx, `SELECT pos FROM push_position WHERE id = 1`).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("push position: %w", err)
	}
	return pos, nil
}

// runEvaluator evaluates new events until ctx ends: it drains what is
// pending, then sleeps until woken (or a minute passes: other processes
// may have written events).
func (s *Service) runEvaluator(ctx context.Context) {
	backoff := time.Second
	for {
		more, err := s.evaluateBatch(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			slog.Error("push evaluator", "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		if more {
			continue
		}
		select {
		case <-s.wake:
		case <-time.After(time.Minute):
		case <-ctx.Done():
			return
		}
	}
}

// evaluateBatch evaluates the events after the durable position, at most
// evalBatch of them, and commits their results with the new position. It
// reports whether more events may be pending.
func (s *Service) evaluateBatch(ctx context.Context) (bool, error) {
	from, err := s.storedPosition(ctx)
	if err != nil {
		return false, err
	}
	upTo, err := s.db.CurrentStreamPos(ctx)
	if err != nil {
		return false, err
	}
	evs, scanned, last, err := s.loadEvents(ctx, from, upTo)
	if err != nil {
		return false, err
	}
	if scanned == 0 {
		// Nothing to evaluate: the position need not be stored.
		s.progress.advance(upTo)
		return false, nil
	}
	newPos, more := upTo, false
	if scanned == evalBatch {
		newPos, more = last, true
	}
	results, err := s.evaluateEvents(ctx, evs)
	if err != nil {
		return false, err
	}
	if err := s.commitResults(ctx, results, newPos); err != nil {
		return false, err
	}
	s.progress.advance(newPos)
	notified := map[string]bool{}
	for _, r := range results {
		for _, n := range r.notifs {
			notified[n.user] = true
		}
	}
	s.gateway.poke(notified)
	return more, nil
}

// loadEvents reads the accepted events with stream positions in
// (from, upTo], at most evalBatch, in stream order. It also returns how
// many it found and the position of the last (events of rooms the server
// no longer knows are found but not returned).
func (s *Service) loadEvents(ctx context.Context, from, upTo int64) (evs []*rooms.Event, scanned int, last int64, err error) {
	rows, err := s.db.Query(ctx, `SELECT nid, room_id, stream_pos FROM events WHERE stream_pos > $1 AND stream_pos <= $2 AND status = 0
		ORDER BY stream_pos LIMIT $3`, from, upTo, evalBatch)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("push: new events: %w", err)
	}
	byRoom := map[string][]int64{}
	for rows.Next() {
		var nid int64
		var roomID string
		if err := rows.Scan(&nid, &roomID, &last); err != nil {
			rows.Close()
			return nil, 0, 0, err
		}
		byRoom[roomID] = append(byRoom[roomID], nid)
		scanned++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, 0, err
	}
	for roomID, nids := range byRoom {
		ver, err := s.rooms.RoomVersion(ctx, roomID)
		if errors.Is(err, rooms.ErrRoomNotFound) {
			continue // a purged room: nothing to notify
		}
		if err != nil {
			return nil, 0, 0, err
		}
		loaded, err := s.rooms.EventsByNID(ctx, ver, nids)
		if err != nil {
			return nil, 0, 0, err
		}
		evs = append(evs, loaded...)
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].Pos < evs[j].Pos })
	return evs, scanned, last, nil
}

// notifRow is one notifying event for one user.
type notifRow struct {
	user      string
	highlight bool
	actions   string
}

// eventResult is the evaluation of one event.
type eventResult struct {
	roomID, thread string
	pos            int64
	sender         string // a local sender: the event marks their thread read
	notifs         []notifRow
	left           string // a local user whose membership this event ends
}

// evaluateEvents evaluates a batch of events for their rooms' members.
func (s *Service) evaluateEvents(ctx context.Context, evs []*rooms.Event) ([]*eventResult, error) {
	type prepared struct {
		ev      *rooms.Event
		rc      *roomCtx
		targets []string
	}
	preps := make([]prepared, 0, len(evs))
	need := map[string]bool{}
	var needList []string
	for _, ev := range evs {
		roomID := ev.RoomID().String()
		ver, err := s.rooms.RoomVersion(ctx, roomID)
		if err != nil {
			return nil, err
		}
		rc, err := s.roomContext(ctx, ev, ver)
		if err != nil {
			return nil, err
		}
		p := prepared{ev: ev, rc: rc, targets: s.targets(ev, rc)}
		for _, u := range p.targets {
			if !need[u] {
				need[u] = true
				needList = append(needList, u)
			}
		}
		preps = append(preps, p)
	}
	states, err := s.userStates(ctx, needList)
	if err != nil {
		return nil, err
	}
	out := make([]*eventResult, 0, len(preps))
	for _, p := range preps {
		ev := p.ev
		sender := string(ev.SenderID())
		res := &eventResult{roomID: ev.RoomID().String(), pos: ev.Pos}
		if s.isLocal(sender) {
			res.sender = sender
		}
		if ev.Type() == spec.MRoomMember && ev.StateKey() != nil && s.isLocal(*ev.StateKey()) {
			if m, _ := ev.Membership(); m == spec.Leave || m == spec.Ban {
				res.left = *ev.StateKey()
			}
		}
		if len(p.targets) > 0 {
			ee := evalEventOf(ev)
			for _, u := range p.targets {
				st := states[u]
				if st.ignored[sender] && !ev.IsState() {
					continue // no notifications for messages of ignored users
				}
				acts := st.rules.evaluate(ee, p.rc.view(u))
				if acts != nil && acts.notify {
					res.notifs = append(res.notifs, notifRow{user: u, highlight: acts.highlight, actions: acts.raw})
				}
			}
		}
		if res.sender != "" || len(res.notifs) > 0 {
			if res.thread, err = s.threadOf(ctx, ev.EventID(), ev.Content()); err != nil {
				return nil, err
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// targets lists the users whose rules an event is evaluated for: the local
// members joined before it, except its sender, and the local user it
// invites.
func (s *Service) targets(ev *rooms.Event, rc *roomCtx) []string {
	sender := string(ev.SenderID())
	var out []string
	for _, u := range rc.local {
		if u != sender {
			out = append(out, u)
		}
	}
	if ev.Type() == spec.MRoomMember && ev.StateKey() != nil {
		if m, _ := ev.Membership(); m == spec.Invite && *ev.StateKey() != sender && s.isLocal(*ev.StateKey()) {
			out = append(out, *ev.StateKey())
		}
	}
	return out
}

// threadOf returns the thread of an event: the root's event ID when it is
// in a thread, else "main". Relations are followed for at most three hops,
// as the spec recommends.
func (s *Service) threadOf(ctx context.Context, eventID string, content []byte) (string, error) {
	relType, parent := relationOf(content)
	thread := threadMain
	for hop := 0; hop < 3; hop++ {
		if relType == relThread {
			thread = parent
			break
		}
		if parent == "" {
			break
		}
		if t, ok := s.threads.Get(parent); ok {
			thread = t
			break
		}
		var rt, rel *string
		err := s.db.QueryRow(ctx, `SELECT rel_type, relates_to FROM events WHERE event_id = $1`, parent).Scan(&rt, &rel)
		if errors.Is(err, db.ErrNoRows) {
			break
		}
		if err != nil {
			return "", err
		}
		relType, parent = deref(rt), deref(rel)
	}
	s.threads.Put(eventID, thread)
	return thread, nil
}

// relationOf returns the rel_type and parent event ID of an event's
// m.relates_to.
func relationOf(content []byte) (relType, parent string) {
	var c struct {
		RelatesTo *struct {
			EventID string `json:"event_id"`
			RelType string `json:"rel_type"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || c.RelatesTo == nil {
		return "", ""
	}
	return c.RelatesTo.RelType, c.RelatesTo.EventID
}

const (
	threadMain = "main"
	relThread  = "m.thread"
)

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// lockRooms serialises, on PostgreSQL, the transactions that change the
// counters of the given rooms (the evaluator's and the read receipts'), so
// that a receipt's recount cannot miss the notifications a concurrent
// evaluator transaction adds. SQLite has a single writer already.
func lockRooms(ctx context.Context, tx *db.Tx, roomIDs []string) error {
	if tx.Dialect() != db.Postgres {
		return nil
	}
	keys := make([]int64, 0, len(roomIDs))
	for _, r := range roomIDs {
		h := fnv.New64a()
		h.Write([]byte("palpo-push:" + r))
		keys = append(keys, int64(h.Sum64()))
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for i, k := range keys {
		if i > 0 && k == keys[i-1] {
			continue
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, k); err != nil {
			return err
		}
	}
	return nil
}

// logErr logs a failure of background work.
func logErr(msg string, err error, args ...any) {
	if err != nil && !errors.Is(err, context.Canceled) {
		slog.Error(msg, append(args, "err", err)...)
	}
}

// placeholders returns "(…), (…)" for rows of cols parameters: $1, $2 …
// on PostgreSQL, and anonymous ? on SQLite, whose driver looks numbered
// parameters up by name one by one (quadratic in a statement of
// thousands).
func placeholders(d db.Dialect, rows, cols int) string {
	var b strings.Builder
	n := 1
	for r := 0; r < rows; r++ {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for c := 0; c < cols; c++ {
			if c > 0 {
				b.WriteByte(',')
			}
			if d == db.SQLite {
				b.WriteByte('?')
			} else {
				fmt.Fprintf(&b, "$%d", n)
			}
			n++
		}
		b.WriteByte(')')
	}
	return b.String()
}
