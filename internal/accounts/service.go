// Package accounts owns users, devices, access and refresh tokens,
// passwords, user-interactive authentication, profiles, account data and
// filters, and serves their client-server endpoints.
package accounts

import (
	"context"
	"encoding/json"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Hooks let other domains react to account changes. server wires them; a nil
// hook is skipped.
type Hooks struct {
	// DeviceDeleted runs after a device and its tokens are gone (E2EE removes
	// the device's keys and pending to-device messages).
	DeviceDeleted func(ctx context.Context, userID, deviceID string)
	// Deactivated runs after an account is deactivated (rooms are left).
	Deactivated func(ctx context.Context, userID string)
	// ProfileChanged runs after a displayname or avatar change (member
	// events in joined rooms are updated).
	ProfileChanged func(ctx context.Context, userID string)
	// RoomExists reports whether the server knows a room; per-room account
	// data for unknown rooms is refused. nil: every well-formed room ID is
	// accepted (until the rooms domain wires it).
	RoomExists func(ctx context.Context, roomID string) (bool, error)
	// AccountDataChanged runs after a user's account data changed (wakes
	// their /sync).
	AccountDataChanged func(userID string)
	// RemoteProfile asks another server for one of its users' profile
	// (federation /query/profile). nil: remote profiles are not found.
	RemoteProfile func(ctx context.Context, userID string) (map[string]json.RawMessage, error)
}

// Limiters are the rate limiters accounts uses; nil limiters allow all.
type Limiters struct {
	Login    *httpx.Limiter
	Register *httpx.Limiter
}

// Service is the accounts domain.
type Service struct {
	cfg    *config.Config
	db     *db.DB
	lim    Limiters
	Hooks  Hooks
	tokens tokenCache
	nonces nonceStore
}

// New returns the accounts service.
func New(cfg *config.Config, d *db.DB, lim Limiters) *Service {
	return &Service{cfg: cfg, db: d, lim: lim, tokens: tokenCache{m: map[string]cachedToken{}}, nonces: nonceStore{m: map[string]int64{}}}
}

// ServerName is the homeserver's name.
func (s *Service) ServerName() string { return s.cfg.ServerName }

// Routes registers the accounts endpoints.
func (s *Service) Routes(rt *httpx.Router) {
	s.registerRoutes(rt)
	s.loginRoutes(rt)
	s.deviceRoutes(rt)
	s.accountRoutes(rt)
	s.profileRoutes(rt)
	s.accountDataRoutes(rt)
	s.filterRoutes(rt)
	s.adminRegisterRoutes(rt)
}
