// Package db opens Palpo's database — embedded SQLite or PostgreSQL — runs the
// embedded migrations and offers the few helpers every store uses.
//
// SQL is written once, in PostgreSQL's dialect with $1, $2 … placeholders;
// for SQLite the placeholders are rewritten to ?1, ?2 … (SQLite's numbered
// parameters), so the same text runs on both. Dialect differences that cannot
// be written once live in the per-dialect migration directories.
//
// SQLite runs in WAL mode with one writer connection (transactions start with
// BEGIN IMMEDIATE, so writers never deadlock on lock upgrades) and a separate
// pool of read-only connections. PostgreSQL uses one pool for both.
package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL driver "pgx"
	_ "modernc.org/sqlite"             // SQLite driver "sqlite"
)

// Dialect names the SQL engine behind a DB.
type Dialect int

// The supported dialects.
const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// DB is an open database: a writer pool and a reader pool (the same pool on
// PostgreSQL).
type DB struct {
	Dialect Dialect
	w, r    *sql.DB
	rebinds sync.Map // query text → rebound text (SQLite only)
}

// Options configure Open.
type Options struct {
	// URL is a postgres:// URL, or empty for SQLite at SQLitePath.
	URL string
	// SQLitePath is the SQLite database file.
	SQLitePath string
	// SQLiteSynchronous is "full" or "normal".
	SQLiteSynchronous string
	// MaxOpenConns bounds the PostgreSQL pool and the SQLite readers.
	MaxOpenConns int
}

// Open connects to the database and brings its schema up to date.
func Open(ctx context.Context, o Options) (*DB, error) {
	if o.MaxOpenConns <= 0 {
		o.MaxOpenConns = 8
	}
	var d *DB
	var err error
	if o.URL != "" {
		d, err = openPostgres(o)
	} else {
		d, err = openSQLite(o)
	}
	if err != nil {
		return nil, err
	}
	if err := d.w.PingContext(ctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	if err := migrate(ctx, d); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func openPostgres(o Options) (*DB, error) {
	pool, err := sql.Open("pgx", o.URL)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	pool.SetMaxOpenConns(o.MaxOpenConns)
	pool.SetMaxIdleConns(o.MaxOpenConns)
	return &DB{Dialect: Postgres, w: pool, r: pool}, nil
}

func openSQLite(o Options) (*DB, error) {
	if o.SQLitePath == "" {
		return nil, errors.New("database: no SQLite path")
	}
	if err := os.MkdirAll(filepath.Dir(o.SQLitePath), 0o700); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	sync := o.SQLiteSynchronous
	if sync == "" {
		sync = "full"
	}
	base := "file:" + (&url.URL{Path: o.SQLitePath}).EscapedPath()
	pragmas := "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + sync + ")"
	w, err := sql.Open("sqlite", base+"?"+pragmas+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	// The writer creates the file and switches it to WAL before readers open.
	if _, err := w.Exec("SELECT 1"); err != nil {
		w.Close()
		return nil, fmt.Errorf("database %s: %w", o.SQLitePath, err)
	}
	r, err := sql.Open("sqlite", base+"?"+pragmas+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	r.SetMaxOpenConns(o.MaxOpenConns)
	r.SetMaxIdleConns(o.MaxOpenConns)
	return &DB{Dialect: SQLite, w: w, r: r}, nil
}

// Close closes both pools.
func (d *DB) Close() error {
	err := d.w.Close()
	if d.r != d.w {
		if err2 := d.r.Close(); err == nil {
			err = err2
		}
	}
	return err
}

// q adapts a query written with $n placeholders to the dialect.
func (d *DB) q(query string) string {
	if d.Dialect == Postgres {
		return query
	}
	if v, ok := d.rebinds.Load(query); ok {
		return v.(string)
	}
	out := strings.ReplaceAll(query, "$", "?")
	d.rebinds.Store(query, out)
	return out
}

// Exec runs a write statement outside an explicit transaction.
func (d *DB) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return d.w.ExecContext(ctx, d.q(query), args...)
}

// Query runs a read query on the reader pool.
func (d *DB) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.r.QueryContext(ctx, d.q(query), args...)
}

// QueryRow runs a single-row read query on the reader pool.
func (d *DB) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return d.r.QueryRowContext(ctx, d.q(query), args...)
}

// Tx is a write transaction. Its methods take $n placeholders like DB's.
type Tx struct {
	d  *DB
	tx *sql.Tx
}

// Exec runs a statement in the transaction.
func (t *Tx) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(ctx, t.d.q(query), args...)
}

// Query runs a query in the transaction.
func (t *Tx) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, t.d.q(query), args...)
}

// QueryRow runs a single-row query in the transaction.
func (t *Tx) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, t.d.q(query), args...)
}

// Dialect is the dialect of the transaction's database.
func (t *Tx) Dialect() Dialect { return t.d.Dialect }

// WriteTx runs fn in a write transaction, committing if fn returns nil and
// rolling back otherwise. On SQLite the transaction holds the single writer
// connection: keep fn short and never do network I/O inside it.
func (d *DB) WriteTx(ctx context.Context, fn func(tx *Tx) error) error {
	sqlTx, err := d.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(&Tx{d: d, tx: sqlTx}); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// IsUniqueViolation reports whether err is a unique or primary-key constraint
// violation on either dialect.
func IsUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "UNIQUE constraint failed") || // SQLite
		strings.Contains(s, "SQLSTATE 23505") // PostgreSQL unique_violation
}

// ErrNoRows is returned by QueryRow(...).Scan when there is no row.
var ErrNoRows = sql.ErrNoRows

// QueryStringSet runs a query whose rows are one text column and returns
// the set of values.
func (d *DB) QueryStringSet(ctx context.Context, query string, args ...any) (map[string]bool, error) {
	rows, err := d.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out[s] = true
	}
	return out, rows.Err()
}
