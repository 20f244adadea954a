package db_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/testutil"
)

func open(t *testing.T, b testutil.Backend, dir string) *db.DB {
	t.Helper()
	o := db.Options{SQLitePath: filepath.Join(dir, "test.db")}
	if b == testutil.Postgres {
		o.URL = testutil.NewPostgresSchema(t)
	}
	d, err := db.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestOpenMigrateTwiceAndQuery(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		o := db.Options{SQLitePath: filepath.Join(t.TempDir(), "test.db")}
		if b == testutil.Postgres {
			o.URL = testutil.NewPostgresSchema(t)
		}
		d1, err := db.Open(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d1.Exec(ctx, `INSERT INTO filters (user_id, filter_id, filter) VALUES ($1, $2, $3)`, "@a:x", 1, "{}"); err != nil {
			t.Fatal(err)
		}
		d1.Close()
		// Re-opening runs the migrations again: nothing changes, nothing is lost.
		d2, err := db.Open(ctx, o)
		if err != nil {
			t.Fatalf("second open: %v", err)
		}
		defer d2.Close()
		var f string
		if err := d2.QueryRow(ctx, `SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2`, "@a:x", 1).Scan(&f); err != nil || f != "{}" {
			t.Fatalf("row after reopen: %q %v", f, err)
		}
		if d2.Dialect != map[testutil.Backend]db.Dialect{testutil.SQLite: db.SQLite, testutil.Postgres: db.Postgres}[b] {
			t.Fatalf("dialect %v", d2.Dialect)
		}
	})
}

func TestWriteTxCommitRollbackAndUniqueViolation(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		d := open(t, b, t.TempDir())
		insert := `INSERT INTO filters (user_id, filter_id, filter) VALUES ($1, $2, $3)`
		boom := errors.New("boom")
		err := d.WriteTx(ctx, func(tx *db.Tx) error {
			if _, err := tx.Exec(ctx, insert, "@a:x", 1, "{}"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("rollback error: %v", err)
		}
		var n int
		if err := d.QueryRow(ctx, `SELECT COUNT(*) FROM filters`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("rolled-back row visible: %d %v", n, err)
		}
		err = d.WriteTx(ctx, func(tx *db.Tx) error {
			if _, err := tx.Exec(ctx, insert, "@a:x", 1, "{}"); err != nil {
				return err
			}
			// Placeholders may appear out of order and repeat.
			var s string
			if err := tx.QueryRow(ctx, `SELECT filter FROM filters WHERE filter_id = $2 AND user_id = $1 AND $2 = $2`, "@a:x", 1).Scan(&s); err != nil {
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Exec(ctx, insert, "@a:x", 1, "{}")
		if !db.IsUniqueViolation(err) {
			t.Fatalf("duplicate insert: %v is not a unique violation", err)
		}
		if db.IsUniqueViolation(nil) || db.IsUniqueViolation(boom) {
			t.Fatal("false positive unique violation")
		}
	})
}

func TestRawReadersSeeCommittedWrites(t *testing.T) {
	// The SQLite reader pool is separate from the writer: a committed write
	// must be visible to the next read at once.
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		d := open(t, b, t.TempDir())
		for i := 0; i < 50; i++ {
			if _, err := d.Exec(ctx, `INSERT INTO filters (user_id, filter_id, filter) VALUES ($1, $2, $3)`, "@r:x", i, "{}"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := d.QueryRow(ctx, `SELECT COUNT(*) FROM filters WHERE user_id = $1`, "@r:x").Scan(&n); err != nil || n != i+1 {
				t.Fatalf("after %d inserts the reader saw %d (%v)", i+1, n, err)
			}
		}
	})
}
