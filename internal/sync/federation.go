package sync

import (
	"context"
	gosync "sync"
	"time"
)

// What the federation domain needs from sync: applying other servers'
// typing notifications, receipts and presence (EDUs in), and reading the
// local ones to send (EDUs out). Receipts and presence are read from their
// tables by stream position, so the federation sender can drive them from
// a durable position; typing is in memory and observed as it changes.

// remoteTypingTimeout is how long a remote user's typing notification
// lasts unless their server stops it first (Synapse's federation timeout).
const remoteTypingTimeout = 60 * time.Second

// ApplyRemoteTyping records a typing notification of another server's user
// (the caller checked the user's server and membership) and wakes the
// room's local members.
func (s *Service) ApplyRemoteTyping(roomID, userID string, typing bool) {
	s.typing.Set(roomID, userID, typing, remoteTypingTimeout)
}

// RemotePresence is a presence update of another server's user, as the
// m.presence EDU carries it.
type RemotePresence struct {
	UserID          string
	Presence        string
	StatusMsg       *string
	LastActiveAgo   int64
	CurrentlyActive bool
}

// ApplyRemotePresence stores the presence of another server's user and
// wakes the local users who share a room with them. It does nothing when
// presence is disabled.
func (s *Service) ApplyRemotePresence(ctx context.Context, p RemotePresence) error {
	if !s.presenceEnabled {
		return nil
	}
	switch p.Presence {
	case PresenceOnline, PresenceUnavailable, PresenceOffline:
	default:
		return nil
	}
	return s.storePresence(ctx, p.UserID, presenceRow{
		Presence: p.Presence, StatusMsg: p.StatusMsg,
		LastActiveTS:    time.Now().UnixMilli() - max(p.LastActiveAgo, 0),
		CurrentlyActive: p.CurrentlyActive && p.Presence == PresenceOnline,
	})
}

// ReceiptsSince returns the public read receipts (m.read) of local users
// with stream positions in (from, to], for the federation sender.
// isLocal decides which users are local.
func (s *Service) ReceiptsSince(ctx context.Context, from, to int64, isLocal func(userID string) bool) ([]Receipt, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
		WHERE stream_pos > $1 AND stream_pos <= $2 AND receipt_type = $3 ORDER BY stream_pos`, from, to, ReceiptRead)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var rc Receipt
		if err := rows.Scan(&rc.RoomID, &rc.Type, &rc.UserID, &rc.ThreadID, &rc.EventID, &rc.TS); err != nil {
			return nil, err
		}
		if isLocal(rc.UserID) {
			out = append(out, rc)
		}
	}
	return out, rows.Err()
}

// PresenceSince returns the presence of local users whose presence changed
// at stream positions in (from, to], as m.presence EDU entries, for the
// federation sender. isLocal decides which users are local.
func (s *Service) PresenceSince(ctx context.Context, from, to int64, isLocal func(userID string) bool) ([]RemotePresence, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, presence, status_msg, last_active_ts, currently_active FROM presence
		WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos`, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	now := time.Now()
	var out []RemotePresence
	for rows.Next() {
		var u string
		var p presenceRow
		if err := rows.Scan(&u, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.CurrentlyActive); err != nil {
			return nil, err
		}
		if !isLocal(u) {
			continue
		}
		out = append(out, RemotePresence{
			UserID: u, Presence: p.Presence, StatusMsg: p.StatusMsg,
			LastActiveAgo:   max(now.UnixMilli()-p.LastActiveTS, 0),
			CurrentlyActive: p.CurrentlyActive && now.Sub(time.UnixMilli(p.LastActiveTS)) < activeWindow,
		})
	}
	return out, rows.Err()
}

// OnLocalTyping calls fn whenever a local user (per isLocal) starts or
// stops typing in a room, including when their notification times out.
// Call it once, before Start.
func (s *Service) OnLocalTyping(isLocal func(userID string) bool, fn func(roomID, userID string, typing bool)) {
	w := &typingWatch{seen: map[string]map[string]bool{}}
	prev := s.typing.changed
	s.typing.changed = func(roomID string) {
		if prev != nil {
			prev(roomID)
		}
		users, _ := s.typing.Get(roomID)
		for _, c := range w.diff(roomID, users, isLocal) {
			fn(roomID, c.userID, c.typing)
		}
	}
}

// typingWatch remembers which local users were typing in each room, to
// turn the tracker's "room changed" into who started and who stopped.
type typingWatch struct {
	mu   gosync.Mutex
	seen map[string]map[string]bool // room → local users typing
}

type typingChange struct {
	userID string
	typing bool
}

// diff records the local users typing now in a room and returns the
// changes since the last call.
func (w *typingWatch) diff(roomID string, users []string, isLocal func(string) bool) []typingChange {
	now := map[string]bool{}
	for _, u := range users {
		if isLocal(u) {
			now[u] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []typingChange
	for u := range now {
		if !w.seen[roomID][u] {
			out = append(out, typingChange{u, true})
		}
	}
	for u := range w.seen[roomID] {
		if !now[u] {
			out = append(out, typingChange{u, false})
		}
	}
	if len(now) == 0 {
		delete(w.seen, roomID)
	} else {
		w.seen[roomID] = now
	}
	return out
}
