package testutil

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/server"
)

// Restart stops s as a crash-free shutdown would and starts a new server on
// the same configuration — data directory, database, signing key and
// address — so that clients keep their URL and access tokens. It returns
// the new server; s must not be used afterwards. Tests use it to check that
// what the server acknowledged survives a restart.
func (s *Server) Restart(t testing.TB) *Server {
	t.Helper()
	s.Stop(t)
	return relaunch(t, s.Config, s.URL, nil)
}

// Stop shuts s down (a crash-free shutdown), for tests that start it again
// later with Restart or Network.Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("stop: shutdown: %v", err)
	}
}

// listenAgain listens on the address of a listener that was just closed,
// retrying briefly in case the system is slow to release the port.
func listenAgain(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart: listen on %s: %v", addr, err)
	}
	return ln
}

// relaunch starts a server on cfg, listening again on cfg.Listen and
// serving federation on fed if not nil, until the test ends.
func relaunch(t testing.TB, cfg *config.Config, url string, fed net.Listener) *Server {
	t.Helper()
	ln := listenAgain(t, cfg.Listen)
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		ln.Close()
		t.Fatalf("restart: %v", err)
	}
	if err := srv.Start(ln, fed); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &Server{Server: srv, URL: url}
}
