// Package sync serves /sync and the ephemeral parts of rooms: typing
// notifications, receipts, read markers and presence.
//
// A sync token is "s<pos>_<typing>": pos is the global stream position
// (every durable item a client syncs takes its position from the one
// counter in the database), typing the typing serial (a time-based counter
// kept in memory, since typing notifications are not stored). Tokens are
// opaque to clients and stay valid across restarts.
package sync

import (
	gosync "sync"
)

// Notifier wakes long-polling /sync requests of the users a change affects,
// and no others. A request registers before it reads the database, so a
// change committed while it reads still wakes it.
type Notifier struct {
	mu      gosync.Mutex
	waiters map[string]map[*Listener]struct{}
}

// Listener is one waiting request.
type Listener struct {
	n      *Notifier
	userID string
	C      chan struct{} // receives (once buffered) when the user is woken
}

// NewNotifier returns an empty notifier.
func NewNotifier() *Notifier {
	return &Notifier{waiters: map[string]map[*Listener]struct{}{}}
}

// Listen registers a listener for userID. Call Close when done.
func (n *Notifier) Listen(userID string) *Listener {
	l := &Listener{n: n, userID: userID, C: make(chan struct{}, 1)}
	n.mu.Lock()
	set := n.waiters[userID]
	if set == nil {
		set = map[*Listener]struct{}{}
		n.waiters[userID] = set
	}
	set[l] = struct{}{}
	n.mu.Unlock()
	return l
}

// Close unregisters the listener.
func (l *Listener) Close() {
	n := l.n
	n.mu.Lock()
	if set := n.waiters[l.userID]; set != nil {
		delete(set, l)
		if len(set) == 0 {
			delete(n.waiters, l.userID)
		}
	}
	n.mu.Unlock()
}

// Wake wakes every listener of the given users.
func (n *Notifier) Wake(userIDs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, u := range userIDs {
		for l := range n.waiters[u] {
			select {
			case l.C <- struct{}{}:
			default:
			}
		}
	}
}

// Waiting is the number of users with a waiting request.
func (n *Notifier) Waiting() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.waiters)
}
