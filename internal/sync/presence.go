package sync

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	gosync "sync"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Presence states.
const (
	PresenceOnline      = "online"
	PresenceUnavailable = "unavailable"
	PresenceOffline     = "offline"
)

const (
	// syncOnlineTimeout: a user who stopped syncing goes offline after this.
	syncOnlineTimeout = 30 * time.Second
	// idleTimeout: an online user with no activity becomes unavailable.
	idleTimeout = 5 * time.Minute
	// activeWindow: currently_active is true within this time of activity.
	activeWindow = time.Minute
)

// presenceRow is a user's stored presence.
type presenceRow struct {
	Presence        string
	StatusMsg       *string
	LastActiveTS    int64
	CurrentlyActive bool
}

// presenceTracker remembers, in memory, when each user last synced, so that
// users whose clients stopped syncing can be marked offline.
type presenceTracker struct {
	mu       gosync.Mutex
	lastSync map[string]time.Time
}

func (s *Service) loadPresence(ctx context.Context, userID string) (*presenceRow, error) {
	var p presenceRow
	err := s.db.QueryRow(ctx, `SELECT presence, status_msg, last_active_ts, currently_active FROM presence WHERE user_id = $1`, userID).
		Scan(&p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.CurrentlyActive)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	return &p, err
}

// setPresence stores a presence change with a new stream position and wakes
// the users who share a room with userID. keepMsg keeps the stored status
// message.
func (s *Service) setPresence(ctx context.Context, userID, presence string, statusMsg *string, keepMsg, active bool) error {
	now := time.Now().UnixMilli()
	cur, err := s.loadPresence(ctx, userID)
	if err != nil {
		return err
	}
	lastActive := now
	if cur != nil {
		if keepMsg {
			statusMsg = cur.StatusMsg
		}
		if !active {
			lastActive = cur.LastActiveTS
		}
	}
	return s.storePresence(ctx, userID, presenceRow{Presence: presence, StatusMsg: statusMsg, LastActiveTS: lastActive,
		CurrentlyActive: active && presence == PresenceOnline})
}

// storePresence stores a user's presence with a new stream position and
// wakes the users who share a room with them.
func (s *Service) storePresence(ctx context.Context, userID string, p presenceRow) error {
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		pos, err := db.NextStreamPos(ctx, tx)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO presence (user_id, presence, status_msg, last_active_ts, currently_active, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, status_msg = excluded.status_msg,
				last_active_ts = excluded.last_active_ts, currently_active = excluded.currently_active, stream_pos = excluded.stream_pos`,
			userID, p.Presence, p.StatusMsg, p.LastActiveTS, p.CurrentlyActive, pos)
		return err
	})
	if err != nil {
		return err
	}
	peers, err := s.sharedUsers(ctx, userID)
	if err != nil {
		return err
	}
	s.notifier.Wake(peers...)
	return nil
}

// touchPresence records that a user is syncing with set_presence; it writes
// only when the stored state would change or last_active is getting stale.
func (s *Service) touchPresence(ctx context.Context, userID, setPresence string) error {
	if !s.presenceEnabled || setPresence == PresenceOffline {
		return nil
	}
	s.presence.mu.Lock()
	s.presence.lastSync[userID] = time.Now()
	s.presence.mu.Unlock()
	cur, err := s.loadPresence(ctx, userID)
	if err != nil {
		return err
	}
	if cur != nil && cur.Presence == setPresence && time.Since(time.UnixMilli(cur.LastActiveTS)) < activeWindow/2 {
		return nil
	}
	return s.setPresence(ctx, userID, setPresence, nil, true, setPresence == PresenceOnline)
}

// expirePresence marks users offline who stopped syncing, and online users
// who have been idle unavailable.
func (s *Service) expirePresence(ctx context.Context, now time.Time) {
	var gone []string
	s.presence.mu.Lock()
	for u, t := range s.presence.lastSync {
		if now.Sub(t) > syncOnlineTimeout {
			gone = append(gone, u)
			delete(s.presence.lastSync, u)
		}
	}
	s.presence.mu.Unlock()
	for _, u := range gone {
		if cur, err := s.loadPresence(ctx, u); err == nil && cur != nil && cur.Presence != PresenceOffline {
			_ = s.setPresence(ctx, u, PresenceOffline, nil, true, false)
		}
	}
	rows, err := s.db.Query(ctx, `SELECT user_id FROM presence WHERE presence = 'online' AND last_active_ts < $1`, now.Add(-idleTimeout).UnixMilli())
	if err != nil {
		return
	}
	var idle []string
	for rows.Next() {
		var u string
		if rows.Scan(&u) == nil {
			idle = append(idle, u)
		}
	}
	rows.Close()
	for _, u := range idle {
		_ = s.setPresence(ctx, u, PresenceUnavailable, nil, true, false)
	}
}

// presenceEvent formats a stored presence as an m.presence event.
func presenceEvent(userID string, p *presenceRow, now time.Time) map[string]any {
	content := map[string]any{
		"presence":         p.Presence,
		"last_active_ago":  max(now.UnixMilli()-p.LastActiveTS, 0),
		"currently_active": p.CurrentlyActive && now.Sub(time.UnixMilli(p.LastActiveTS)) < activeWindow,
	}
	if p.StatusMsg != nil {
		content["status_msg"] = *p.StatusMsg
	}
	return map[string]any{"type": "m.presence", "sender": userID, "content": content}
}

func (s *Service) handleGetPresence(r *http.Request, p *httpx.Principal) (any, error) {
	userID := r.PathValue("userId")
	if !s.presenceEnabled {
		return nil, httpx.Forbidden("Presence is disabled on this server")
	}
	if userID != p.UserID {
		peers, err := s.sharedUsers(r.Context(), p.UserID)
		if err != nil {
			return nil, err
		}
		shared := false
		for _, u := range peers {
			shared = shared || u == userID
		}
		if !shared {
			return nil, httpx.Forbidden("You do not share a room with %s", userID)
		}
	}
	cur, err := s.loadPresence(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return map[string]any{"presence": PresenceOffline}, nil
	}
	return presenceEvent(userID, cur, time.Now())["content"], nil
}

func (s *Service) handlePutPresence(r *http.Request, p *httpx.Principal) (any, error) {
	if r.PathValue("userId") != p.UserID {
		return nil, httpx.Forbidden("You may only set your own presence")
	}
	var body struct {
		Presence  string  `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	switch body.Presence {
	case PresenceOnline, PresenceUnavailable, PresenceOffline:
	case "":
		return nil, httpx.MissingParam("presence is required")
	default:
		return nil, httpx.InvalidParam("presence must be online, unavailable or offline")
	}
	if !s.presenceEnabled {
		return httpx.Empty, nil // accepted and ignored, as Synapse does with presence off
	}
	if err := s.setPresence(r.Context(), p.UserID, body.Presence, body.StatusMsg, false, body.Presence == PresenceOnline); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// presenceSince returns the m.presence events visible to userID with
// positions in (from, to] (from < 0: all), among users who share a room.
func (s *Service) presenceSince(ctx context.Context, peers map[string]bool, from, to int64) ([]json.RawMessage, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, presence, status_msg, last_active_ts, currently_active FROM presence WHERE stream_pos > $1 AND stream_pos <= $2`, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	now := time.Now()
	var out []json.RawMessage
	for rows.Next() {
		var u string
		var p presenceRow
		if err := rows.Scan(&u, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.CurrentlyActive); err != nil {
			return nil, err
		}
		if !peers[u] {
			continue
		}
		b, _ := json.Marshal(presenceEvent(u, &p, now))
		out = append(out, b)
	}
	return out, rows.Err()
}

// newlyMetUsers lists the users the syncing user shares a room with for the
// first time in this sync range: members of rooms they just joined, and
// users who just joined one of their rooms.
func (s *Service) newlyMetUsers(ctx context.Context, rq *Request) ([]string, error) {
	set := map[string]bool{}
	for _, roomID := range rq.newlyJoined {
		members, err := s.rooms.JoinedMembers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		for _, m := range members {
			set[m] = true
		}
	}
	joined, err := s.rooms.JoinedRooms(ctx, rq.UserID)
	if err != nil {
		return nil, err
	}
	joiners, err := s.rooms.JoinsInRange(ctx, joined, rq.Since.Pos, rq.To)
	if err != nil {
		return nil, err
	}
	for _, u := range joiners {
		set[u] = true
	}
	delete(set, rq.UserID)
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	return out, nil
}

// currentPresence returns the stored presence of users, skipping those
// already in have.
func (s *Service) currentPresence(ctx context.Context, users []string, have []json.RawMessage) ([]json.RawMessage, error) {
	already := map[string]bool{}
	for _, raw := range have {
		var ev struct {
			Sender string `json:"sender"`
		}
		if json.Unmarshal(raw, &ev) == nil {
			already[ev.Sender] = true
		}
	}
	now := time.Now()
	var out []json.RawMessage
	for _, u := range users {
		if already[u] {
			continue
		}
		p, err := s.loadPresence(ctx, u)
		if err != nil {
			return nil, err
		}
		if p == nil {
			continue
		}
		b, _ := json.Marshal(presenceEvent(u, p, now))
		out = append(out, b)
	}
	return out, nil
}
