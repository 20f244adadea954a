// Package server builds every Palpo component from the configuration, wires
// them together and owns the listeners and the lifecycle.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/e2ee"
	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/media"
	"github.com/palpo-go/palpo/internal/push"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/sync"
)

// Server is a running homeserver's components.
type Server struct {
	Config     *config.Config
	DB         *db.DB
	SigningKey *federation.SigningKey
	Accounts   *accounts.Service
	Rooms      *rooms.Engine
	Sync       *sync.Service
	Federation *federation.Federation
	E2EE       *e2ee.Service
	Media      *media.Service
	Push       *push.Service

	// RoomFederation is the room-level federation built on Federation.
	RoomFederation *federation.Service

	// NewSigningKey is true when this start created the signing key (first
	// start of a fresh data directory).
	NewSigningKey bool

	router  *httpx.Router
	handler http.Handler
	servers []*http.Server
	errs    chan error
}

// New opens the database, loads or creates the signing key and builds every
// component. It does not listen yet.
func New(ctx context.Context, cfg *config.Config) (*Server, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	key, created, err := federation.LoadOrCreateSigningKey(cfg.SigningKeyPath())
	if err != nil {
		return nil, err
	}
	d, err := db.Open(ctx, db.Options{
		URL:               cfg.Database.URL,
		SQLitePath:        cfg.DatabasePath(),
		SQLiteSynchronous: cfg.Database.SQLiteSynchronous,
		MaxOpenConns:      cfg.Database.MaxOpenConns,
	})
	if err != nil {
		return nil, err
	}
	s := &Server{Config: cfg, DB: d, SigningKey: key, NewSigningKey: created, errs: make(chan error, 2)}
	if s.Federation, err = federation.New(cfg, d, key); err != nil {
		d.Close()
		return nil, err
	}

	var lim accounts.Limiters
	if cfg.RateLimitEnabled() {
		rl := cfg.RateLimits
		lim.Login = httpx.NewLimiter(rl.LoginPerSecond, rl.LoginBurst)
		lim.Register = httpx.NewLimiter(rl.RegisterPerSecond, rl.RegisterBurst)
	}
	s.Accounts = accounts.New(cfg, d, lim)
	s.Rooms = rooms.NewEngine(d, cfg.ServerName, (*rooms.SigningKey)(key), s.Accounts.GetProfile, rooms.Config{})
	if cfg.RateLimitEnabled() {
		s.Rooms.SendLimiter = httpx.NewLimiter(cfg.RateLimits.SendPerSecond, cfg.RateLimits.SendBurst)
	}
	s.Accounts.Hooks.RoomExists = s.Rooms.RoomExists
	s.Accounts.Hooks.Deactivated = func(ctx context.Context, userID string) {
		// The account is gone whatever the client does now: finish leaving.
		if err := s.Rooms.LeaveAllRooms(context.WithoutCancel(ctx), userID); err != nil {
			slog.Error("deactivated account: leaving rooms", "user", userID, "err", err)
		}
	}
	s.Accounts.Hooks.ProfileChanged = func(ctx context.Context, userID string) {
		if err := s.Rooms.UpdateProfileInRooms(context.WithoutCancel(ctx), userID); err != nil {
			slog.Error("profile change: updating member events", "user", userID, "err", err)
		}
	}
	s.Sync = sync.New(d, s.Rooms, s.Accounts, cfg.Presence)
	s.E2EE = e2ee.New(d, s.Accounts, s.Rooms, s.Sync.Notifier())
	s.Sync.AddExtension(s.E2EE.Extension())
	s.Accounts.Hooks.DeviceDeleted = s.E2EE.OnDeviceDeleted
	// E2EE records joins and departures before sync wakes the room, so the
	// woken /sync sees them in device_lists.
	s.Rooms.NewEvents = func(evs []*rooms.Event) { s.E2EE.OnNewEvents(evs); s.Sync.OnNewEvents(evs) }
	s.Accounts.Hooks.AccountDataChanged = s.Sync.OnAccountData

	s.router = httpx.NewRouter(s.Accounts.Authenticate, cfg.MaxBodyBytes)
	s.Accounts.Routes(s.router)
	s.Rooms.Routes(s.router)
	s.Sync.Routes(s.router)
	s.E2EE.Routes(s.router)
	s.Federation.Routes(s.router)
	s.wireFederation()
	s.wireE2EEFederation()
	s.wireToDeviceFederation()
	s.wireDeviceListFederation()
	// Joins, leaves, knocks and invites across servers (both ways).
	s.RoomFederation.MembershipRoutes()
	s.Rooms.Remote = s.RoomFederation
	s.Rooms.NotifyUser = func(userID string) { s.Sync.Notifier().Wake(userID) }
	if s.Media, err = media.New(cfg, d, s.Federation); err != nil {
		d.Close()
		return nil, err
	}
	s.Media.Routes(s.router)
	s.infoRoutes(s.router)
	s.wirePush()

	var reg prometheus.Registerer // nil: metrics off
	if cfg.Metrics.Enabled {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		s.router.Raw("GET /metrics", promhttp.HandlerFor(r, promhttp.HandlerOpts{}))
		reg = r
	}
	s.handler = httpx.Recover(httpx.Instrument(s.router, reg))
	return s, nil
}

// Handler is the HTTP handler serving every API.
func (s *Server) Handler() http.Handler { return s.handler }

// Start serves on the given listeners: main (plain HTTP) and, if not nil,
// fed (TLS federation listener, using the configured certificate). It
// returns at once; errors of the serving goroutines arrive on Err.
func (s *Server) Start(main, fed net.Listener) error {
	newSrv := func() *http.Server {
		return &http.Server{
			Handler:           s.handler,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       5 * time.Minute,
			ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
		}
	}
	s.Sync.Start()
	s.RoomFederation.Start()
	if err := s.Push.Start(); err != nil {
		return err
	}
	s.Media.Start()
	hs := newSrv()
	s.servers = append(s.servers, hs)
	go func() { s.serveErr(hs.Serve(main)) }()
	if fed != nil {
		cert, err := tls.LoadX509KeyPair(s.Config.TLSCert, s.Config.TLSKey)
		if err != nil {
			return fmt.Errorf("tls_cert/tls_key: %w", err)
		}
		fs := newSrv()
		fs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.servers = append(s.servers, fs)
		go func() { s.serveErr(fs.ServeTLS(fed, "", "")) }()
	}
	return nil
}

func (s *Server) serveErr(err error) {
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.errs <- err
	}
}

// Err delivers a fatal serving error.
func (s *Server) Err() <-chan error { return s.errs }

// Shutdown stops accepting requests, lets in-flight requests finish (until
// ctx ends) and closes the database.
func (s *Server) Shutdown(ctx context.Context) error {
	var first error
	s.Sync.Stop()
	s.RoomFederation.Stop()
	s.Push.Stop()
	s.Media.Stop()
	for _, hs := range s.servers {
		if err := hs.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
	}
	if err := s.DB.Close(); err != nil && first == nil {
		first = err
	}
	return first
}
