// Package rooms is the room engine: it builds, authorises and persists
// events, keeps state snapshots and current state, resolves state across
// forks, and serves the client-server room endpoints.
//
// Every write to a room goes through one writer at a time (a per-room lock
// in this process); different rooms proceed in parallel. An event, its
// state, the room's forward extremities and its stream position are stored
// in one transaction. After the commit the engine updates its caches and
// calls the NewEvents hook, which wakes /sync and the durable consumers.
package rooms

import (
	"context"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/cache"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// DefaultRoomVersion is the version of new rooms unless the client asks for
// another (the spec's recommendation).
const DefaultRoomVersion = gomatrixserverlib.RoomVersionV12

// Profiles looks up a local user's profile for membership events.
type Profiles func(ctx context.Context, userID string) (displayname, avatarURL *string, err error)

// Engine is the room engine.
type Engine struct {
	db         *db.DB
	serverName spec.ServerName
	key        *SigningKey
	profiles   Profiles

	// NewEvents is called after events are committed, in stream order.
	NewEvents func(evs []*Event)
	// SendLimiter rate-limits message sends per user (nil: no limit).
	SendLimiter *httpx.Limiter
	// Remote performs the membership handshakes with other servers
	// (remote_membership.go); nil: rooms of this server only.
	Remote RemoteMembership
	// NotifyUser is called after a change that concerns one user outside
	// any room this server follows (an invite received over federation, a
	// knock through another server) is committed, to wake their /sync.
	NotifyUser func(userID string)
	// Federation reaches other servers (backfill, remote directories and
	// aliases); see FederationHooks.
	Federation FederationHooks

	locks     sync.Map // room ID → *sync.Mutex
	rooms     *cache.LRU[string, *roomInfo]
	snapshots *cache.LRU[int64, StateMap]
	events    *cache.LRU[int64, *Event]
	eventNIDs *cache.LRU[string, int64]
}

// Config sizes the engine's caches.
type Config struct {
	RoomCache     int // rooms whose current state is kept in memory
	SnapshotCache int // state snapshots kept in memory
	EventCache    int // events kept in memory
}

// NewEngine returns a room engine.
func NewEngine(d *db.DB, serverName string, key *SigningKey, profiles Profiles, c Config) *Engine {
	if c.RoomCache == 0 {
		c.RoomCache = 2000
	}
	if c.SnapshotCache == 0 {
		c.SnapshotCache = 2000
	}
	if c.EventCache == 0 {
		c.EventCache = 50000
	}
	return &Engine{
		db:         d,
		serverName: spec.ServerName(serverName),
		key:        key,
		profiles:   profiles,
		rooms:      cache.NewLRU[string, *roomInfo](c.RoomCache),
		snapshots:  cache.NewLRU[int64, StateMap](c.SnapshotCache),
		events:     cache.NewLRU[int64, *Event](c.EventCache),
		eventNIDs:  cache.NewLRU[string, int64](c.EventCache),
	}
}

// ServerName is this homeserver's name.
func (e *Engine) ServerName() string { return string(e.serverName) }

// lockRoom takes the room's writer lock; call the returned func to release.
func (e *Engine) lockRoom(roomID string) func() {
	v, _ := e.locks.LoadOrStore(roomID, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// userIDForSender maps sender IDs to user IDs. Palpo's rooms use user IDs
// as sender IDs (no pseudonymous IDs).
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// checkSendLimit applies the per-user send rate limit.
func (e *Engine) checkSendLimit(userID string) error { return e.SendLimiter.Check(userID) }
