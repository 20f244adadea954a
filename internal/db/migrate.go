package db

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrations embed.FS

// migrate brings the schema up to date with the embedded migrations of the
// dialect. It is safe to run any number of times and from several processes
// on PostgreSQL (goose takes an advisory lock there).
func migrate(ctx context.Context, d *DB) error {
	sub, err := fs.Sub(migrations, "migrations/"+d.Dialect.String())
	if err != nil {
		return err
	}
	var gd goose.Dialect = goose.DialectSQLite3
	var opts []goose.ProviderOption
	if d.Dialect == Postgres {
		gd = goose.DialectPostgres
	}
	// Branches developed in parallel may land migrations out of number
	// order; apply any that are missing instead of refusing to start.
	opts = append(opts, goose.WithLogger(goose.NopLogger()), goose.WithAllowOutofOrder(true))
	if d.Dialect == Postgres {
		// The advisory lock is per database; schemas in one database (one
		// per test, or several deployments) must not queue behind each
		// other, so the lock ID comes from the schema the connection uses.
		locker, err := lock.NewPostgresSessionLocker(
			lock.WithLockID(int64(schemaLockID(ctx, d))),
			lock.WithLockTimeout(1, 300), // retry every second, for 5 minutes
		)
		if err != nil {
			return err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(gd, d.w, sub, opts...)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	for _, r := range results {
		slog.Debug("database migration applied", "version", r.Source.Version, "path", r.Source.Path)
	}
	return nil
}

// schemaLockID derives the migration lock ID from the current schema.
func schemaLockID(ctx context.Context, d *DB) uint32 {
	var schema string
	if err := d.w.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		schema = "public"
	}
	h := fnv.New32a()
	h.Write([]byte("palpo-migrations:" + schema))
	return h.Sum32()
}

// Raw exposes the underlying writer pool for tools that need database/sql
// directly (tests). Application code uses Exec, Query and WriteTx.
func (d *DB) Raw() *sql.DB { return d.w }
