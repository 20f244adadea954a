package push

import (
	"context"
	"time"
)

// Pruning keeps push_notifications bounded: rows older than
// notificationRetention are deleted. Rows carry stream positions, not
// times, so the pruner records once per pruneEvery which stream position
// the clock was at (push_prune_marks) and deletes the rows at or below the
// newest mark older than the retention. Counters are kept apart and are
// not affected.

const (
	notificationRetention = 30 * 24 * time.Hour
	pruneEvery            = time.Hour
)

// runPruner prunes old notifications until ctx ends.
func (s *Service) runPruner(ctx context.Context) {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		logErr("pruning notifications", s.prune(ctx, time.Now()))
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// prune records a mark for now and deletes the notifications older than
// the retention.
func (s *Service) prune(ctx context.Context, now time.Time) error {
	pos, err := s.db.CurrentStreamPos(ctx)
	if err != nil {
		return err
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO push_prune_marks (ts, stream_pos) VALUES ($1, $2)`, now.UnixMilli(), pos); err != nil {
		return err
	}
	cutoff := now.Add(-notificationRetention).UnixMilli()
	var upTo *int64
	if err := s.db.QueryRow(ctx, `SELECT MAX(stream_pos) FROM push_prune_marks WHERE ts < $1`, cutoff).Scan(&upTo); err != nil || upTo == nil {
		return err
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM push_notifications WHERE stream_pos <= $1`, *upTo); err != nil {
		return err
	}
	_, err = s.db.Exec(ctx, `DELETE FROM push_prune_marks WHERE ts < $1`, cutoff)
	return err
}
