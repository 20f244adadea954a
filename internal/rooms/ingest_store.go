package rooms

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/palpo-go/palpo/internal/db"
)

// Storing an ingest batch: snapshots, events, current state and forward
// extremities in one transaction, then the engine's caches.

// refOf returns the snapshot ref of a state, planning its snapshot.
func (x *ingestBatch) refOf(s *stateAt) int64 {
	if s.hasRef {
		return s.ref
	}
	p := &snapPlan{full: s.m, delta: s.m}
	if s.parent != nil {
		p.parent, p.delta = x.refOf(s.parent), s.delta
	}
	x.plans = append(x.plans, p)
	s.ref, s.hasRef = -int64(len(x.plans)), true
	return s.ref
}

// finish plans the snapshots the batch stores: the state before each event
// (in order, so each plan only names events stored before it) and the new
// current state.
func (x *ingestBatch) finish(ctx context.Context) error {
	for _, it := range x.items {
		if it.before != nil {
			x.refOf(it.before)
		}
		it.planMark = len(x.plans)
	}
	x.refOf(x.cur)
	// Load the events whose current-state rows change.
	var nids []int64
	for _, nid := range diffState(x.ri.state, x.cur.m) {
		if nid > 0 {
			nids = append(nids, nid)
		}
	}
	return x.loadNIDs(ctx, nids)
}

// write stores the batch in one transaction.
func (x *ingestBatch) write(ctx context.Context) error {
	e, ri := x.e, x.ri
	real := map[int64]int64{}    // provisional NID → NID
	stored := map[int64]*Event{} // NID → event, for the batch's events
	var unknownNID error
	translate := func(m StateMap) StateMap {
		var out StateMap
		for k, nid := range m {
			if nid < 0 {
				if out == nil {
					out = m.Clone()
				}
				if out[k] = real[nid]; out[k] == 0 {
					unknownNID = fmt.Errorf("state names event %d before it is stored", nid)
				}
			}
		}
		if out == nil {
			return m
		}
		return out
	}
	refID := func(ref int64) int64 {
		if ref < 0 {
			return x.plans[-ref-1].id
		}
		return ref
	}
	now := time.Now().UnixMilli()
	return e.db.WriteTx(ctx, func(tx *db.Tx) error {
		if x.creating {
			if _, err := tx.Exec(ctx, `INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)`,
				ri.id, string(ri.version), now); err != nil {
				return fmt.Errorf("insert room: %w", err)
			}
		}
		backfillPos, err := x.backfillBase(ctx, tx)
		if err != nil {
			return err
		}
		planned := 0
		storePlans := func(upto int) error {
			for ; planned < upto; planned++ {
				p := x.plans[planned]
				p.full, p.delta = translate(p.full), translate(p.delta)
				if unknownNID != nil {
					return unknownNID
				}
				id, err := e.storeSnapshot(ctx, tx, ri.id, refID(p.parent), p.full, p.delta)
				if err != nil {
					return err
				}
				p.id = id
			}
			return nil
		}
		for _, it := range x.items {
			if err := storePlans(it.planMark); err != nil {
				return err
			}
			ev := it.ev
			ev.StateBefore = stateUnknown
			if it.before != nil {
				ev.StateBefore = refID(it.before.ref)
			}
			var pos int64
			if ev.Status == StatusAccepted {
				var err error
				if x.opts.backfill {
					pos, backfillPos = backfillPos, backfillPos+1
				} else if pos, err = db.NextStreamPos(ctx, tx); err != nil {
					return err
				}
			}
			prov := ev.NID
			if it.deoutlier {
				if _, err := tx.Exec(ctx, `UPDATE events SET status = $1, stream_pos = $2, state_before = $3 WHERE nid = $4`,
					ev.Status, pos, ev.StateBefore, ev.NID); err != nil {
					return fmt.Errorf("update outlier: %w", err)
				}
				ev.Pos = pos
			} else if err := insertEventAt(ctx, tx, ri.id, ev, pos); err != nil {
				return err
			}
			real[prov] = ev.NID
			stored[ev.NID] = ev
			if !it.outlier {
				for _, p := range ev.PrevEventIDs() {
					if _, err := tx.Exec(ctx, `INSERT INTO event_edges (room_id, event_id, prev_event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
						ri.id, ev.EventID(), p); err != nil {
						return fmt.Errorf("insert edge: %w", err)
					}
				}
			}
			if it.reason != "" {
				if _, err := tx.Exec(ctx, `INSERT INTO event_rejections (event_id, room_id, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
					ev.EventID(), ri.id, it.reason); err != nil {
					return fmt.Errorf("insert rejection: %w", err)
				}
			}
			if reds := x.pending[ev.EventID()]; len(reds) > 0 && ev.RedactedBy != "" {
				if _, err := tx.Exec(ctx, `DELETE FROM pending_redactions WHERE redacts = $1`, ev.EventID()); err != nil {
					return err
				}
			}
		}
		if err := storePlans(len(x.plans)); err != nil {
			return err
		}
		for _, r := range x.dbRedacts {
			if err := applyRedaction(ctx, tx, ri.verImpl, r.target, r.redaction); err != nil {
				return err
			}
		}
		for _, p := range x.newPend {
			if _, err := tx.Exec(ctx, `INSERT INTO pending_redactions (redacts, redaction_id, room_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
				p.target, p.redaction, ri.id); err != nil {
				return err
			}
		}
		// The room's current state and forward extremities.
		x.cur.m = translate(x.cur.m)
		if snap := refID(x.cur.ref); snap != ri.snapshot {
			if _, err := tx.Exec(ctx, `UPDATE rooms SET state_snapshot = $1 WHERE room_id = $2`, snap, ri.id); err != nil {
				return err
			}
		}
		for k, nid := range diffState(ri.state, x.cur.m) {
			if nid == 0 {
				if _, err := tx.Exec(ctx, `DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`, ri.id, k.Type, k.StateKey); err != nil {
					return err
				}
				continue
			}
			ev := stored[nid]
			if ev == nil {
				ev = x.byNID[nid]
			}
			if ev == nil {
				return fmt.Errorf("current state event %d not loaded", nid)
			}
			if err := upsertCurrentState(ctx, tx, ri.id, ev); err != nil {
				return err
			}
		}
		for _, id := range ri.extremities {
			if !slices.Contains(x.ext, id) {
				if _, err := tx.Exec(ctx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2`, ri.id, id); err != nil {
					return err
				}
			}
		}
		for _, id := range x.ext {
			if !slices.Contains(ri.extremities, id) {
				if _, err := tx.Exec(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`, ri.id, id); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// publish updates the engine's caches after the commit and returns the
// accepted events in stream order.
func (x *ingestBatch) publish() []*Event {
	e, ri := x.e, x.ri
	for _, p := range x.plans {
		e.snapshots.Put(p.id, p.full)
	}
	var accepted []*Event
	maxDepth := ri.maxDepth
	for _, it := range x.items {
		e.cacheEvent(it.ev)
		if it.ev.Status == StatusAccepted {
			accepted = append(accepted, it.ev)
			if slices.Contains(x.ext, it.ev.EventID()) {
				maxDepth = max(maxDepth, it.ev.Depth())
			}
		}
	}
	for _, r := range x.dbRedacts {
		e.events.Remove(r.target.NID)
	}
	newRI := *ri
	newRI.extremities = slices.Clone(x.ext)
	newRI.maxDepth = maxDepth
	newRI.state = x.cur.m
	newRI.snapshot = x.cur.ref
	if newRI.snapshot < 0 {
		newRI.snapshot = x.plans[-newRI.snapshot-1].id
	}
	e.rooms.Put(ri.id, &newRI)
	return accepted
}
