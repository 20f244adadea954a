package federation

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/rooms"
)

// The sender reads the global stream from a durable position
// (federation_sender_position): local room events, public read receipts
// of local users and their presence. Each step turns a range of positions
// into queue rows for the destinations concerned and advances the position
// in the same database transaction, so that nothing committed is missed
// across a crash and nothing is queued twice. The room engine's NewEvents
// hook wakes the reader at once; receipts and presence are picked up on
// the next poll.

const (
	// streamPoll is how often the reader looks for positions without being
	// woken.
	streamPoll = time.Second
	// streamStep bounds the positions one step reads.
	streamStep = 500
)

// errPositionMoved is returned when another process advanced the position
// first.
var errPositionMoved = errors.New("federation sender position moved")

// wakeStream makes the stream reader look for new positions now.
func (s *Sender) wakeStream() {
	select {
	case s.streamWake <- struct{}{}:
	default:
	}
}

// runStream reads the stream until the sender stops.
func (s *Sender) runStream() {
	defer s.wg.Done()
	tick := time.NewTicker(streamPoll)
	defer tick.Stop()
	for {
		if err := s.catchUp(s.ctx); err != nil && s.ctx.Err() == nil && !errors.Is(err, errPositionMoved) {
			slog.Error("federation: reading the stream for the sender", "err", err)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.streamWake:
		case <-tick.C:
		}
	}
}

// catchUp queues everything between the sender's position and the
// current stream position.
func (s *Sender) catchUp(ctx context.Context) error {
	for {
		var from int64
		if err := s.db.QueryRow(ctx, `SELECT pos FROM federation_sender_position WHERE id = 1`).Scan(&from); err != nil {
			return err
		}
		to, err := s.db.CurrentStreamPos(ctx)
		if err != nil {
			return err
		}
		if to <= from {
			return nil
		}
		to = min(to, from+streamStep)
		rows, err := s.collect(ctx, from, to)
		if err != nil {
			return err
		}
		err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
			res, err := tx.Exec(ctx, `UPDATE federation_sender_position SET pos = $1 WHERE id = 1 AND pos = $2`, to, from)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				return errPositionMoved
			}
			return insertQueued(ctx, tx, rows)
		})
		if err != nil {
			return err
		}
		woken := map[string]bool{}
		for _, q := range rows {
			if !woken[q.destination] {
				woken[q.destination] = true
				s.wake(q.destination)
			}
		}
	}
}

// collect builds the queue rows for the stream positions in (from, to].
func (s *Sender) collect(ctx context.Context, from, to int64) ([]queued, error) {
	dests := &destCache{s: s.svc, rooms: map[string][]string{}, snaps: map[int64][]string{}}
	rows, err := s.eventRows(ctx, from, to, dests)
	if err != nil {
		return nil, err
	}
	rcs, err := s.svc.sync.ReceiptsSince(ctx, from, to, s.svc.isLocalUser)
	if err != nil {
		return nil, err
	}
	byRoom := receiptEDUs(rcs)
	roomIDs := make([]string, 0, len(byRoom))
	for roomID := range byRoom {
		roomIDs = append(roomIDs, roomID)
	}
	slices.Sort(roomIDs)
	for _, roomID := range roomIDs {
		raw, err := json.Marshal(map[string]any{"edu_type": eduReceipt, "content": byRoom[roomID]})
		if err != nil {
			return nil, err
		}
		servers, err := dests.room(ctx, roomID)
		if err != nil {
			return nil, err
		}
		for _, d := range servers {
			rows = append(rows, queued{destination: d, kind: kindEDU, edu: raw})
		}
	}
	presence, err := s.presenceRows(ctx, from, to, dests)
	if err != nil {
		return nil, err
	}
	return append(rows, presence...), nil
}

// eventRows queues the local events accepted at positions in (from, to]
// for the other servers joined to their rooms at that point (in the state
// after the event, not now: a server that joined later must not receive
// what came before) — and, for a kick or ban, for the server of the user
// it removes.
func (s *Sender) eventRows(ctx context.Context, from, to int64, dests *destCache) ([]queued, error) {
	rs, err := s.db.Query(ctx, `SELECT event_id, sender FROM events
		WHERE stream_pos > $1 AND stream_pos <= $2 AND status = 0 ORDER BY stream_pos`, from, to)
	if err != nil {
		return nil, err
	}
	var ids []string
	for rs.Next() {
		var id, sender string
		if err := rs.Scan(&id, &sender); err != nil {
			rs.Close()
			return nil, err
		}
		if s.svc.isLocalUser(sender) {
			ids = append(ids, id)
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, err
	}
	var rows []queued
	for _, id := range ids {
		ev, err := s.svc.rooms.EventByID(ctx, id)
		if err != nil {
			return nil, err
		}
		if ev == nil {
			continue
		}
		if resident, err := s.svc.sentByResident(ctx, ev); err != nil {
			return nil, err
		} else if resident {
			continue // the resident server sends it (membership_join.go)
		}
		servers, err := dests.at(ctx, ev)
		if err != nil {
			// One event must not stop the stream: send it where the room
			// is now.
			slog.Error("federation: the servers at an event", "event", id, "err", err)
			if servers, err = dests.room(ctx, ev.RoomID().String()); err != nil {
				return nil, err
			}
		}
		if target := removedServer(ev); validDestination(target) && target != s.svc.serverName && !slices.Contains(servers, target) {
			servers = append(slices.Clone(servers), target)
		}
		for _, d := range servers {
			rows = append(rows, queued{destination: d, kind: kindPDU, eventID: id})
		}
	}
	return rows, nil
}

// removedServer returns, for a membership event that makes a user leave
// or banned, the user's server.
func removedServer(ev *rooms.Event) string {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return ""
	}
	if m, _ := ev.Membership(); m != spec.Leave && m != spec.Ban {
		return ""
	}
	return serverOfUser(*ev.StateKey())
}

// presenceRows queues m.presence EDUs for the presence changes of local
// users at positions in (from, to]: one EDU per destination, listing the
// users it shares a room with.
func (s *Sender) presenceRows(ctx context.Context, from, to int64, dests *destCache) ([]queued, error) {
	updates, err := s.svc.sync.PresenceSince(ctx, from, to, s.svc.isLocalUser)
	if err != nil || len(updates) == 0 {
		return nil, err
	}
	push := map[string][]presenceUpdate{}
	var order []string
	for _, u := range updates {
		joined, err := s.svc.rooms.JoinedRooms(ctx, u.UserID)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, roomID := range joined {
			servers, err := dests.room(ctx, roomID)
			if err != nil {
				return nil, err
			}
			for _, d := range servers {
				if seen[d] {
					continue
				}
				seen[d] = true
				if _, ok := push[d]; !ok {
					order = append(order, d)
				}
				push[d] = append(push[d], presenceUpdate{UserID: u.UserID, Presence: u.Presence, StatusMsg: u.StatusMsg,
					LastActiveAgo: u.LastActiveAgo, CurrentlyActive: u.CurrentlyActive})
			}
		}
	}
	rows := make([]queued, 0, len(order))
	for _, d := range order {
		raw, err := json.Marshal(map[string]any{"edu_type": eduPresence, "content": presenceContent{Push: push[d]}})
		if err != nil {
			return nil, err
		}
		rows = append(rows, queued{destination: d, kind: kindEDU, edu: raw})
	}
	return rows, nil
}

// destCache remembers the other servers of rooms during one step: now
// (room) and at events (at, by state snapshot).
type destCache struct {
	s     *Service
	rooms map[string][]string
	snaps map[int64][]string
}

// room returns the servers other than this one with joined members in a
// room now, sorted.
func (c *destCache) room(ctx context.Context, roomID string) ([]string, error) {
	if d, ok := c.rooms[roomID]; ok {
		return d, nil
	}
	d, err := c.s.Sender.RoomServers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	c.rooms[roomID] = d
	return d, nil
}

// at returns the servers other than this one with joined members in the
// state after a stored event, sorted.
func (c *destCache) at(ctx context.Context, ev *rooms.Event) ([]string, error) {
	if !ev.IsState() {
		if d, ok := c.snaps[ev.StateBefore]; ok {
			return d, nil
		}
	}
	state, err := c.s.rooms.StateAt(ctx, ev, true)
	if err != nil {
		return nil, err
	}
	members := rooms.StateMap{}
	for k, nid := range state {
		if k.Type == spec.MRoomMember && serverOfUser(k.StateKey) != c.s.serverName {
			members[k] = nid
		}
	}
	evs, err := c.s.rooms.RoomStateEvents(ctx, ev.RoomID().String(), members)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, m := range evs {
		if mm, _ := m.Membership(); mm == spec.Join && validDestination(serverOfUser(*m.StateKey())) {
			set[serverOfUser(*m.StateKey())] = true
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	slices.Sort(out)
	if !ev.IsState() {
		c.snaps[ev.StateBefore] = out
	}
	return out, nil
}

// RoomServers returns the servers other than this one with joined members
// in a room, sorted: where the room's events and EDUs go.
func (s *Sender) RoomServers(ctx context.Context, roomID string) ([]string, error) {
	set, err := s.svc.roomServers(ctx, roomID)
	if errors.Is(err, rooms.ErrRoomNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	delete(set, s.svc.serverName)
	out := make([]string, 0, len(set))
	for d := range set {
		if validDestination(d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out, nil
}

// typingRefresh is how often the typing notifications of local users who
// are still typing are sent again: receivers drop a remote user's typing
// after a timeout of their own (Synapse: a minute), while a client keeps
// its user typing by repeating a request that changes nothing here.
const typingRefresh = 20 * time.Second

// localTyping sends a local user's typing change to the room's other
// servers (best effort; sync calls it) and remembers who types, for
// refreshTyping.
func (s *Sender) localTyping(roomID, userID string, typing bool) {
	s.mu.Lock()
	users := s.typing[roomID]
	if typing {
		if users == nil {
			users = map[string]bool{}
			s.typing[roomID] = users
		}
		users[userID] = true
	} else {
		delete(users, userID)
		if len(users) == 0 {
			delete(s.typing, roomID)
		}
	}
	s.mu.Unlock()
	s.sendTyping(roomID, userID, typing)
}

// sendTyping sends one typing notification to a room's other servers.
func (s *Sender) sendTyping(roomID, userID string, typing bool) {
	servers, err := s.RoomServers(context.Background(), roomID)
	if err != nil || len(servers) == 0 {
		return
	}
	s.SendEphemeral(servers, eduTyping, typingContent{RoomID: roomID, UserID: userID, Typing: typing})
}

// refreshTyping sends the typing notifications of the local users who are
// still typing again, every typingRefresh, until the sender stops.
func (s *Sender) refreshTyping() {
	defer s.wg.Done()
	tick := time.NewTicker(typingRefresh)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		type typer struct{ roomID, userID string }
		var now []typer
		s.mu.Lock()
		for roomID, users := range s.typing {
			for u := range users {
				now = append(now, typer{roomID, u})
			}
		}
		s.mu.Unlock()
		for _, t := range now {
			s.sendTyping(t.roomID, t.userID, true)
		}
	}
}
