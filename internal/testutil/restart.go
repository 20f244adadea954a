package testutil

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/server"
)

// Restart stops s as a crash-free shutdown would and starts a new server on
// the same configuration — data directory, database, signing key and
// address — so that clients keep their URL and access tokens. It returns
// the new server; s must not be used afterwards. Tests use it to check that
// what the server acknowledged survives a restart.
func (s *Server) Restart(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("restart: shutdown: %v", err)
	}
	var ln net.Listener
	var err error
	// The old listener's port is free once Shutdown returns; retry briefly
	// in case the system is slow to release it.
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", s.Config.Listen); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart: listen on %s: %v", s.Config.Listen, err)
	}
	srv, err := server.New(context.Background(), s.Config)
	if err != nil {
		ln.Close()
		t.Fatalf("restart: %v", err)
	}
	if err := srv.Start(ln, nil); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &Server{Server: srv, URL: s.URL}
}
