package sync

import (
	"context"
	"net/http"
	"sort"
	gosync "sync"
	"time"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Typing keeps who is typing in which room, in memory: typing
// notifications are ephemeral and not worth a disk write.
type Typing struct {
	mu     gosync.Mutex
	rooms  map[string]*roomTyping
	serial int64
	// changed is called (without the lock) when a room's typing set changes.
	changed func(roomID string)
}

type roomTyping struct {
	users  map[string]time.Time // user → expiry
	serial int64                // serial of the last change
}

// NewTyping returns an empty typing tracker.
func NewTyping(changed func(roomID string)) *Typing {
	return &Typing{rooms: map[string]*roomTyping{}, changed: changed}
}

// nextSerial returns a serial greater than any before, based on the clock so
// that tokens from before a restart stay older than new changes.
func (t *Typing) nextSerial() int64 {
	s := time.Now().UnixMicro()
	if s <= t.serial {
		s = t.serial + 1
	}
	t.serial = s
	return s
}

// Set marks userID as typing in roomID for timeout, or stops it.
func (t *Typing) Set(roomID, userID string, typing bool, timeout time.Duration) {
	t.mu.Lock()
	rt := t.rooms[roomID]
	if rt == nil {
		rt = &roomTyping{users: map[string]time.Time{}}
		t.rooms[roomID] = rt
	}
	_, was := rt.users[userID]
	if typing {
		rt.users[userID] = time.Now().Add(timeout)
	} else {
		delete(rt.users, userID)
	}
	changed := was != typing
	if changed {
		rt.serial = t.nextSerial()
	}
	t.mu.Unlock()
	if changed && t.changed != nil {
		t.changed(roomID)
	}
}

// Get returns who is typing in a room and the serial of the last change.
func (t *Typing) Get(roomID string) ([]string, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil {
		return nil, 0
	}
	users := make([]string, 0, len(rt.users))
	for u := range rt.users {
		users = append(users, u)
	}
	sort.Strings(users)
	return users, rt.serial
}

// Serial is the current typing serial.
func (t *Typing) Serial() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.serial
}

// expire drops typing users whose timeout passed.
func (t *Typing) expire(now time.Time) {
	var changed []string
	t.mu.Lock()
	for roomID, rt := range t.rooms {
		n := len(rt.users)
		for u, exp := range rt.users {
			if now.After(exp) {
				delete(rt.users, u)
			}
		}
		if len(rt.users) != n {
			rt.serial = t.nextSerial()
			changed = append(changed, roomID)
		}
		if len(rt.users) == 0 && len(changed) == 0 || (len(rt.users) == 0 && changed[len(changed)-1] != roomID) {
			delete(t.rooms, roomID)
		}
	}
	t.mu.Unlock()
	if t.changed != nil {
		for _, r := range changed {
			t.changed(r)
		}
	}
}

// run expires typing notifications until ctx ends.
func (t *Typing) run(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t.expire(now)
		}
	}
}

// maxTypingTimeout caps client-supplied typing timeouts.
const maxTypingTimeout = 2 * time.Minute

func (s *Service) handleTyping(r *http.Request, p *httpx.Principal) (any, error) {
	roomID := r.PathValue("roomId")
	if r.PathValue("userId") != p.UserID {
		return nil, httpx.Forbidden("You may only set your own typing state")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Typing == nil {
		return nil, httpx.BadJSON("typing is required")
	}
	if err := s.requireJoined(r.Context(), roomID, p.UserID); err != nil {
		return nil, err
	}
	timeout := 30 * time.Second
	if body.Timeout != nil {
		if *body.Timeout < 0 {
			return nil, httpx.BadJSON("timeout must not be negative")
		}
		timeout = min(time.Duration(*body.Timeout)*time.Millisecond, maxTypingTimeout)
	}
	s.typing.Set(roomID, p.UserID, *body.Typing, timeout)
	return httpx.Empty, nil
}
