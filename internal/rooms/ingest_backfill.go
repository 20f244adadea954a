package rooms

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
)

// AsBackfill marks the events as history from before the room's earliest
// known events (what federation's /backfill returns): none is soft-failed
// or becomes a forward extremity, accepted ones take stream positions below
// every accepted event of the room — oldest lowest — so that /messages
// finds them before the local history and /sync never sees them as new, and
// the NewEvents hook is not called for them.
func AsBackfill() IngestOption { return func(o *ingestOptions) { o.backfill = true } }

// backfillBase returns the first of the stream positions the batch's
// accepted events take when it is a backfill (0 otherwise): they count up
// to just below the room's lowest position (and below 0, which is the
// position of events outside the timeline).
func (x *ingestBatch) backfillBase(ctx context.Context, tx *db.Tx) (int64, error) {
	if !x.opts.backfill {
		return 0, nil
	}
	n := int64(0)
	for _, it := range x.items {
		if it.ev.Status == StatusAccepted {
			n++
		}
	}
	var lowest int64
	if err := tx.QueryRow(ctx, `SELECT COALESCE(MIN(stream_pos), 0) FROM events WHERE room_id = $1 AND status = 0`, x.ri.id).Scan(&lowest); err != nil {
		return 0, err
	}
	return min(lowest, 0) - n, nil
}

// backfillsCreate reports whether ev is the room's own create event, known
// as an outlier since the room was joined over federation, coming back
// with the history (AsBackfill): it then joins the timeline, at its start,
// with the empty state before it.
func (x *ingestBatch) backfillsCreate(ev *Event) bool {
	known := x.known[ev.EventID()]
	return x.opts.backfill && known != nil && known.Status == StatusOutlier &&
		x.ri.state[StateKey{spec.MRoomCreate, ""}] == known.NID
}
