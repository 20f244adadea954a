package testutil

import (
	"log/slog"
	"os"
)

// Tests log warnings and errors only (PALPO_TEST_LOG=debug shows all), so
// that expected retries and refusals do not bury test failures.
func init() {
	level := slog.LevelWarn
	if os.Getenv("PALPO_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	slog.SetLogLoggerLevel(level)
}
