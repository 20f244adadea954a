package push

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/cache"
	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Service is the push domain.
type Service struct {
	db         *db.DB
	rooms      *rooms.Engine
	accounts   *accounts.Service
	cfg        config.PushConfig
	serverName string

	users    *cache.LRU[string, *userState] // compiled rules and ignored users
	roomCtxs *cache.LRU[int64, *roomCtx]    // room context per state snapshot
	threads  *cache.LRU[string, string]     // event ID → thread ("main" or root)
	usersGen atomic.Uint64                  // bumped whenever a cached user is forgotten
	ruleMu   sync.Map                       // user ID → *sync.Mutex: rule edits

	progress progress
	wake     chan struct{}
	gateway  *gateway

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// userState is what evaluation needs of one user, cached until their push
// rules or account data change.
type userState struct {
	rules   *compiledRules
	ignored map[string]bool // m.ignored_user_list
}

// New returns the push service. Call Start to run its evaluator and
// pushers, and Stop at shutdown.
func New(d *db.DB, r *rooms.Engine, a *accounts.Service, cfg config.PushConfig) *Service {
	s := &Service{
		db:         d,
		rooms:      r,
		accounts:   a,
		cfg:        cfg,
		serverName: r.ServerName(),
		users:      cache.NewLRU[string, *userState](20000),
		roomCtxs:   cache.NewLRU[int64, *roomCtx](1000),
		threads:    cache.NewLRU[string, string](20000),
		wake:       make(chan struct{}, 1),
	}
	s.progress.init()
	s.gateway = newGateway(s)
	return s
}

// Routes registers the push rule, pusher and notification endpoints.
func (s *Service) Routes(rt *httpx.Router) {
	s.ruleRoutes(rt)
	s.pusherRoutes(rt)
	rt.Authed("GET /_matrix/client/v3/notifications", s.handleNotifications)
}

// Start runs the evaluator and the pushers until Stop.
func (s *Service) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	pos, err := s.storedPosition(ctx)
	if err != nil {
		cancel()
		return err
	}
	s.progress.advance(pos)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.runEvaluator(ctx)
	}()
	go func() {
		defer s.wg.Done()
		s.runPruner(ctx)
	}()
	return s.gateway.start(ctx)
}

// Stop ends the evaluator and the pushers and waits for them.
func (s *Service) Stop() {
	if s.stop == nil {
		return
	}
	s.stop()
	s.stop = nil
	s.wg.Wait()
	s.gateway.wait()
}

// OnNewEvents wakes the evaluator. The room engine calls it (through
// server) after each commit; the events themselves are read from the
// database, so nothing is lost if the process dies first.
func (s *Service) OnNewEvents([]*rooms.Event) { s.Wake() }

// Wake asks the evaluator to look for new events.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// OnAccountData forgets what is cached about a user whose account data
// changed (their ignored users may have).
func (s *Service) OnAccountData(userID string) { s.forgetUser(userID) }

// forgetUser drops a user's cached evaluation state.
func (s *Service) forgetUser(userID string) {
	s.usersGen.Add(1)
	s.users.Remove(userID)
}

// DeviceDeleted removes the pushers of a deleted device (logout, device
// deletion, password change with logout_devices).
func (s *Service) DeviceDeleted(ctx context.Context, userID, deviceID string) {
	err := s.deletePushers(ctx, `DELETE FROM pushers WHERE user_id = $1 AND device_id = $2`, userID, deviceID)
	logErr("device deleted", err, "user", userID, "device", deviceID)
}

// Deactivated removes every pusher and push rule of a deactivated account.
func (s *Service) Deactivated(ctx context.Context, userID string) {
	err := s.deletePushers(ctx, `DELETE FROM pushers WHERE user_id = $1`, userID)
	logErr("deactivation", err, "user", userID)
	for _, q := range []string{`DELETE FROM push_rules WHERE user_id = $1`, `DELETE FROM push_rule_defaults WHERE user_id = $1`} {
		if _, err := s.db.Exec(context.WithoutCancel(ctx), q, userID); err != nil {
			logErr("deactivation: deleting push rules", err, "user", userID)
		}
	}
	s.forgetUser(userID)
}

// isLocal reports whether userID belongs to this server.
func (s *Service) isLocal(userID string) bool {
	i := strings.IndexByte(userID, ':')
	return i > 0 && userID[i+1:] == s.serverName
}

// userStates returns the evaluation state of users, loading the ones not
// cached.
func (s *Service) userStates(ctx context.Context, users []string) (map[string]*userState, error) {
	out := make(map[string]*userState, len(users))
	gen := s.usersGen.Load()
	for _, u := range users {
		if st, ok := s.users.Get(u); ok {
			out[u] = st
			continue
		}
		rs, err := s.ruleset(ctx, u)
		if err != nil {
			return nil, err
		}
		st := &userState{rules: compileRuleset(rs)}
		raw, err := s.accounts.GetAccountData(ctx, u, "", "m.ignored_user_list")
		if err != nil {
			return nil, err
		}
		if raw != nil {
			var c struct {
				IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
			}
			if json.Unmarshal(raw, &c) == nil && len(c.IgnoredUsers) > 0 {
				st.ignored = make(map[string]bool, len(c.IgnoredUsers))
				for id := range c.IgnoredUsers {
					st.ignored[id] = true
				}
			}
		}
		if s.usersGen.Load() == gen {
			// Cache only what no concurrent change made stale.
			s.users.Put(u, st)
		}
		out[u] = st
	}
	return out, nil
}
