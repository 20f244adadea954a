package rooms

import (
	"context"
	"fmt"

	"github.com/palpo-go/palpo/internal/db"
)

// StateKey is a (type, state_key) tuple.
type StateKey struct {
	Type     string
	StateKey string
}

// StateMap maps state keys to event NIDs. Maps handed out by the engine are
// shared and must not be modified; Clone before changing one.
type StateMap map[StateKey]int64

// Clone returns a modifiable copy.
func (m StateMap) Clone() StateMap {
	c := make(StateMap, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// maxSnapshotChain bounds the number of deltas between full snapshots, so
// loading any snapshot reads at most this many + 1 entry sets.
const maxSnapshotChain = 16

// loadSnapshot returns the full state of a snapshot (0 = empty state).
func (e *Engine) loadSnapshot(ctx context.Context, id int64) (StateMap, error) {
	if id == 0 {
		return StateMap{}, nil
	}
	if m, ok := e.snapshots.Get(id); ok {
		return m, nil
	}
	rows, err := e.db.Query(ctx, `WITH RECURSIVE chain(snapshot_id, parent, lvl) AS (
			SELECT snapshot_id, parent, 0 FROM state_snapshots WHERE snapshot_id = $1
			UNION ALL
			SELECT s.snapshot_id, s.parent, c.lvl + 1 FROM state_snapshots s JOIN chain c ON s.snapshot_id = c.parent
		)
		SELECT e.type, e.state_key, e.event_nid FROM chain c JOIN state_entries e ON e.snapshot_id = c.snapshot_id
		ORDER BY c.lvl DESC`, id)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %d: %w", id, err)
	}
	defer rows.Close()
	m := StateMap{}
	for rows.Next() {
		var k StateKey
		var nid int64
		if err := rows.Scan(&k.Type, &k.StateKey, &nid); err != nil {
			return nil, err
		}
		if nid == 0 {
			delete(m, k)
		} else {
			m[k] = nid
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	e.snapshots.Put(id, m)
	return m, nil
}

// snapshotChain returns the chain length of a snapshot.
func snapshotChain(ctx context.Context, tx *db.Tx, id int64) (int, error) {
	if id == 0 {
		return 0, nil
	}
	var chain int
	err := tx.QueryRow(ctx, `SELECT chain FROM state_snapshots WHERE snapshot_id = $1`, id).Scan(&chain)
	return chain, err
}

// storeSnapshot writes the snapshot of state full, which differs from the
// snapshot parent by delta (entries with NID 0 are removals). It writes a
// delta while the parent's chain is short and a full snapshot otherwise.
func (e *Engine) storeSnapshot(ctx context.Context, tx *db.Tx, roomID string, parent int64, full StateMap, delta StateMap) (int64, error) {
	chain, err := snapshotChain(ctx, tx, parent)
	if err != nil {
		return 0, err
	}
	entries := delta
	if parent == 0 || chain+1 >= maxSnapshotChain || len(delta) > len(full)/2 {
		parent, chain, entries = 0, -1, full
	}
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO state_snapshots (room_id, parent, chain) VALUES ($1, $2, $3) RETURNING snapshot_id`,
		roomID, parent, chain+1).Scan(&id); err != nil {
		return 0, fmt.Errorf("store snapshot: %w", err)
	}
	for k, nid := range entries {
		if _, err := tx.Exec(ctx, `INSERT INTO state_entries (snapshot_id, type, state_key, event_nid) VALUES ($1, $2, $3, $4)`,
			id, k.Type, k.StateKey, nid); err != nil {
			return 0, fmt.Errorf("store snapshot entry: %w", err)
		}
	}
	return id, nil
}

// diffState returns the entries of next that differ from prev, with NID 0
// for keys that next lacks.
func diffState(prev, next StateMap) StateMap {
	d := StateMap{}
	for k, v := range next {
		if prev[k] != v {
			d[k] = v
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			d[k] = 0
		}
	}
	return d
}
