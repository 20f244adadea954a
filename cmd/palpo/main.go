// Command palpo is the Palpo Matrix homeserver.
//
//	palpo [serve]                       run the homeserver (the default)
//	palpo generate-config               print a commented configuration file
//	palpo user create NAME [--admin] [--password P]
//	palpo user reset-password NAME [--password P]
//	palpo registration-token create [--uses N] [--expires DURATION]
//	palpo version
//
// Configuration comes from --config FILE (or PALPO_CONFIG) and PALPO_*
// environment variables; with neither, Palpo runs as "localhost" on
// 127.0.0.1:8008 with SQLite under ./palpo-data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/palpo-go/palpo/internal/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "palpo:", err)
		os.Exit(1)
	}
}

// usageError marks errors caused by a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + " (see palpo help)" }

const usage = `Palpo — a Matrix homeserver.

Usage:
  palpo [serve] [--config FILE]          run the homeserver (default)
  palpo generate-config                  print a commented configuration file
  palpo user create NAME [--admin] [--password P]
  palpo user reset-password NAME [--password P]
  palpo registration-token create [--uses N] [--expires 72h]
  palpo media delete|quarantine|unquarantine mxc://SERVER/ID, or purge-remote|purge-local --days N
  palpo version

Every option can be set in the YAML file or by a PALPO_* environment variable
(see generate-config). With no configuration at all Palpo serves "localhost"
on 127.0.0.1:8008 and keeps its data in ./palpo-data.
`

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return cmdServe(args, stdout)
	case "generate-config":
		fmt.Fprint(stdout, config.Sample())
		return nil
	case "user":
		return cmdUser(args, stdout)
	case "registration-token":
		return cmdRegistrationToken(args, stdout)
	case "media":
		return cmdMedia(args, stdout)
	case "version":
		fmt.Fprintf(stdout, "palpo %s\n", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// loadConfig parses --config from fs's arguments and loads the configuration.
func loadConfig(fs *flag.FlagSet, args []string) (*config.Config, error) {
	path := fs.String("config", os.Getenv("PALPO_CONFIG"), "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err.Error()}
	}
	return config.Load(*path, os.Environ())
}

func setupLogging(cfg *config.Config, w io.Writer) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	slog.SetDefault(slog.New(h))
}

// signalContext is cancelled on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

var errNoName = errors.New("a user name is required")
