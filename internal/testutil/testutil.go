// Package testutil starts real Palpo servers for tests: in-process, on a
// free loopback port, with a fresh database — SQLite always, and PostgreSQL
// when PALPO_TEST_POSTGRES holds a connection URL (each server in its own
// schema, dropped afterwards, so runs never collide).
package testutil

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/server"
)

// Backend names a database backend.
type Backend string

// The backends.
const (
	SQLite   Backend = "sqlite"
	Postgres Backend = "postgres"
)

// PostgresURL is the PostgreSQL URL for tests, or "".
func PostgresURL() string { return os.Getenv("PALPO_TEST_POSTGRES") }

// Backends lists the backends to test: SQLite, plus PostgreSQL when
// PALPO_TEST_POSTGRES is set.
func Backends() []Backend {
	if PostgresURL() != "" {
		return []Backend{SQLite, Postgres}
	}
	return []Backend{SQLite}
}

// ForEachBackend runs fn as a subtest per backend.
func ForEachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, b := range Backends() {
		t.Run(string(b), func(t *testing.T) { fn(t, b) })
	}
}

// Server is a running test homeserver.
type Server struct {
	*server.Server
	// URL is the base URL of the client API, without trailing slash.
	URL string
}

// Option adjusts a test server's configuration before it starts.
type Option func(*config.Config)

// WithServerName sets the server name (default: 127.0.0.1:PORT, so that
// other servers in the test can reach it).
func WithServerName(name string) Option { return func(c *config.Config) { c.ServerName = name } }

// Start runs a Palpo server with backend b until the test ends. By default
// registration is open, rate limits are off and the server name is its
// own loopback address.
func Start(t testing.TB, b Backend, opts ...Option) *Server {
	t.Helper()
	return start(t, b, nil, opts...)
}

// start is Start with an optional TLS federation listener (see Network).
func start(t testing.TB, b Backend, fed net.Listener, opts ...Option) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Listen = ln.Addr().String()
	cfg.ServerName = cfg.Listen
	cfg.DataDir = t.TempDir()
	cfg.Registration = config.RegistrationOpen
	cfg.RegistrationSharedSecret = "test-shared-secret"
	cfg.RateLimit = "off"
	cfg.LogLevel = "warn"
	cfg.Database.SQLiteSynchronous = "normal"
	if b == Postgres {
		cfg.Database.URL = NewPostgresSchema(t)
	}
	for _, o := range opts {
		o(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ln, fed); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &Server{Server: srv, URL: "http://" + ln.Addr().String()}
}

// NewPostgresSchema creates a fresh schema in the PALPO_TEST_POSTGRES
// database, drops it when the test ends, and returns a URL whose
// connections use it. The test fails if PostgreSQL is not configured.
func NewPostgresSchema(t testing.TB) string {
	t.Helper()
	base := PostgresURL()
	if base == "" {
		t.Fatal("PALPO_TEST_POSTGRES is not set")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "palpo_test_" + hex.EncodeToString(b)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer admin.Close()
		_, _ = admin.Exec("DROP SCHEMA " + schema + " CASCADE")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
