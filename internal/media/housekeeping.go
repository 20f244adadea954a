package media

import (
	"context"
	"time"
)

// housekeepingInterval is how often the housekeeping runs.
const housekeepingInterval = time.Hour

// stagedMaxAge is the age after which a staged file is a leftover of an
// interrupted upload (no upload takes a day).
const stagedMaxAge = 24 * time.Hour

// housekeepingLoop runs Housekeep at start and then every hour until Stop.
func (s *Service) housekeepingLoop() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.stop
		cancel()
	}()
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	for {
		s.Housekeep(ctx)
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// Housekeep expires media IDs that waited for their upload in vain,
// applies media.remote_retention and media.local_retention, drops stale
// cached previews and removes staged files left by interrupted uploads.
// Failures are logged; the next run tries again.
func (s *Service) Housekeep(ctx context.Context) {
	now := s.now()
	if _, err := s.db.Exec(ctx, `DELETE FROM media WHERE server_name = $1 AND uploaded_ts = 0 AND expires_ts > 0 AND expires_ts <= $2`,
		s.serverName, now.UnixMilli()); err != nil && ctx.Err() == nil {
		s.log.Warn("media: expiring unused media IDs", "err", err)
	}
	if s.cfg.RemoteRetention > 0 {
		if n, err := s.PurgeRemote(ctx, now.Add(-s.cfg.RemoteRetention)); err != nil && ctx.Err() == nil {
			s.log.Warn("media: remote retention", "err", err)
		} else if n > 0 {
			s.log.Info("media: remote retention purged cached media", "items", n)
		}
	}
	if s.cfg.LocalRetention > 0 {
		if ids, err := s.DeleteLocalBefore(ctx, now.Add(-s.cfg.LocalRetention)); err != nil && ctx.Err() == nil {
			s.log.Warn("media: local retention", "err", err)
		} else if len(ids) > 0 {
			s.log.Info("media: local retention deleted media", "items", len(ids))
		}
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM media_url_previews WHERE fetched_ts < $1`,
		now.Add(-previewTTL).UnixMilli()); err != nil && ctx.Err() == nil {
		s.log.Warn("media: expiring cached previews", "err", err)
	}
	if err := s.store.CleanStaged(now.Add(-stagedMaxAge)); err != nil {
		s.log.Warn("media: removing leftover staged files", "err", err)
	}
}
