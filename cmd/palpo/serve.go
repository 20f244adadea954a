package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/palpo-go/palpo/internal/server"
)

func cmdServe(args []string, stdout io.Writer) error {
	cfg, err := loadConfig(flag.NewFlagSet("serve", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	setupLogging(cfg, stdout)
	ctx, stop := signalContext()
	defer stop()

	srv, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	main, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		srv.Shutdown(context.Background())
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var fed net.Listener
	if cfg.Federation.Listen != "" {
		if fed, err = net.Listen("tcp", cfg.Federation.Listen); err != nil {
			main.Close()
			srv.Shutdown(context.Background())
			return fmt.Errorf("listen %s: %w", cfg.Federation.Listen, err)
		}
	}
	if err := srv.Start(main, fed); err != nil {
		srv.Shutdown(context.Background())
		return err
	}

	dbDesc := "SQLite " + cfg.DatabasePath()
	if cfg.Database.URL != "" {
		dbDesc = "PostgreSQL"
	}
	dataDir, _ := filepath.Abs(cfg.DataDir)
	slog.Info("Palpo is running", "server_name", cfg.ServerName, "version", version)
	slog.Info("client and federation API listening", "url", "http://"+main.Addr().String()+"/")
	if fed != nil {
		slog.Info("TLS federation listener", "addr", fed.Addr().String())
	}
	slog.Info("data", "dir", dataDir, "database", dbDesc)
	if err := announceRegistration(ctx, srv, stdout); err != nil {
		slog.Warn("could not prepare the first registration token", "err", err)
	}

	select {
	case <-ctx.Done():
	case err := <-srv.Err():
		slog.Error("server failed", "err", err)
		shutdown(srv)
		return err
	}
	slog.Info("shutting down: finishing in-flight requests")
	return shutdown(srv)
}

func shutdown(srv *server.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return err
	}
	slog.Info("stopped cleanly")
	return nil
}

// announceRegistration tells the operator how the first account gets made.
// On a server with no users and closed or token registration, it creates a
// one-time registration token and prints it.
func announceRegistration(ctx context.Context, srv *server.Server, w io.Writer) error {
	cfg := srv.Config
	if cfg.Registration == "open" {
		slog.Info("registration is open: anyone who can reach this server may create an account")
		return nil
	}
	tok, err := srv.Accounts.FirstStartToken(ctx)
	if err != nil || tok == "" {
		return err
	}
	fmt.Fprintf(w, `
  No accounts exist yet. Create the first one either way:
    * in a Matrix client (e.g. Element) pointed at %s, register with
      the one-time registration token:  %s
    * or on this machine:  palpo user create NAME --admin
`+"\n", cfg.BaseURL(), tok)
	return nil
}
