package media

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// mediaRow is one row of the media table.
type mediaRow struct {
	ServerName  string
	MediaID     string
	UserID      string
	ContentType string
	Filename    string
	Size        int64
	SHA256      string
	ImageFormat string // "" unless the content is an image Palpo can thumbnail
	Width       int
	Height      int
	Created     int64 // ms
	Uploaded    int64 // ms; 0 while the content is not there
	Expires     int64 // ms; unused_expires_at of a pending ID
	LastAccess  int64 // ms
	Quarantined bool
}

// ready reports whether the row's content is there.
func (m *mediaRow) ready() bool { return m.Uploaded != 0 && m.SHA256 != "" }

// content is what a row's content is described by; the upload, remote and
// preview paths fill it before writing the row.
type content struct {
	SHA256      string
	Size        int64
	ContentType string
	Filename    string
	ImageFormat string
	Width       int
	Height      int
}

const mediaColumns = `server_name, media_id, user_id, content_type, filename, size_bytes, sha256, image_format,
	width, height, created_ts, uploaded_ts, expires_ts, last_access_ts, quarantined`

// scanner is *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanMedia(s scanner) (*mediaRow, error) {
	var m mediaRow
	err := s.Scan(&m.ServerName, &m.MediaID, &m.UserID, &m.ContentType, &m.Filename, &m.Size, &m.SHA256, &m.ImageFormat,
		&m.Width, &m.Height, &m.Created, &m.Uploaded, &m.Expires, &m.LastAccess, &m.Quarantined)
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// getMedia returns the row of server/mediaID, or nil.
func (s *Service) getMedia(ctx context.Context, server, mediaID string) (*mediaRow, error) {
	m, err := scanMedia(s.db.QueryRow(ctx, `SELECT `+mediaColumns+` FROM media WHERE server_name = $1 AND media_id = $2`, server, mediaID))
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("media: reading %s/%s: %w", server, mediaID, err)
	}
	return m, nil
}

// putMedia writes the row of media whose content is there: a new upload,
// or remote media cached (replacing a placeholder row that only carried a
// quarantine, which it keeps).
func (s *Service) putMedia(ctx context.Context, server, mediaID, userID string, c content, now int64) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media (`+mediaColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 0, $11, $12)
		ON CONFLICT (server_name, media_id) DO UPDATE SET
			content_type = excluded.content_type, filename = excluded.filename, size_bytes = excluded.size_bytes,
			sha256 = excluded.sha256, image_format = excluded.image_format, width = excluded.width,
			height = excluded.height, created_ts = excluded.created_ts, uploaded_ts = excluded.uploaded_ts,
			last_access_ts = excluded.last_access_ts`,
		server, mediaID, userID, c.ContentType, c.Filename, c.Size, c.SHA256, c.ImageFormat, c.Width, c.Height, now, false)
	if err != nil {
		return fmt.Errorf("media: storing %s/%s: %w", server, mediaID, err)
	}
	return nil
}

// ensureRemoteRow gives remote media a row (without content) if it has
// none, so that its cached thumbnails age and get purged with it.
func (s *Service) ensureRemoteRow(ctx context.Context, server, mediaID string) error {
	now := s.nowMS()
	_, err := s.db.Exec(ctx, `INSERT INTO media (server_name, media_id, created_ts, last_access_ts) VALUES ($1, $2, $3, $3)
		ON CONFLICT (server_name, media_id) DO NOTHING`, server, mediaID, now)
	if err != nil {
		return fmt.Errorf("media: recording %s/%s: %w", server, mediaID, err)
	}
	return nil
}

// createPending records a media ID made with /create, refusing a user who
// has too many waiting for their upload.
func (s *Service) createPending(ctx context.Context, mediaID, userID string, now, expires int64) error {
	return s.db.WriteTx(ctx, func(tx *db.Tx) error {
		var pending int
		var soonest sql.NullInt64
		err := tx.QueryRow(ctx, `SELECT COUNT(*), MIN(expires_ts) FROM media
			WHERE user_id = $1 AND uploaded_ts = 0 AND expires_ts > $2 AND server_name = $3`,
			userID, now, s.serverName).Scan(&pending, &soonest)
		if err != nil {
			return err
		}
		if pending >= s.cfg.MaxPendingUploads {
			return httpx.NewError(429, "M_LIMIT_EXCEEDED",
				"You have %d media IDs waiting for their upload; upload them or wait for them to expire", pending).
				With("retry_after_ms", max(soonest.Int64-now, 1))
		}
		_, err = tx.Exec(ctx, `INSERT INTO media (server_name, media_id, user_id, created_ts, expires_ts, last_access_ts)
			VALUES ($1, $2, $3, $4, $5, $4)`, s.serverName, mediaID, userID, now, expires)
		return err
	})
}

// completePending stores the content of a media ID made with /create. It
// reports false when the ID got its content in the meantime (a concurrent
// upload won).
func (s *Service) completePending(ctx context.Context, mediaID string, c content, now int64) (bool, error) {
	res, err := s.db.Exec(ctx, `UPDATE media SET content_type = $3, filename = $4, size_bytes = $5, sha256 = $6,
			image_format = $7, width = $8, height = $9, uploaded_ts = $10, expires_ts = 0, last_access_ts = $10
		WHERE server_name = $1 AND media_id = $2 AND uploaded_ts = 0`,
		s.serverName, mediaID, c.ContentType, c.Filename, c.Size, c.SHA256, c.ImageFormat, c.Width, c.Height, now)
	if err != nil {
		return false, fmt.Errorf("media: storing %s: %w", mediaID, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// touchInterval is how stale last_access_ts may get before a download
// writes it again: one write per media per hour at most.
const touchInterval = int64(60 * 60 * 1000)

// touch records a download for retention, at most once per touchInterval.
func (s *Service) touch(ctx context.Context, m *mediaRow) {
	now := s.nowMS()
	if now-m.LastAccess < touchInterval {
		return
	}
	if _, err := s.db.Exec(context.WithoutCancel(ctx), `UPDATE media SET last_access_ts = $3 WHERE server_name = $1 AND media_id = $2`,
		m.ServerName, m.MediaID, now); err != nil {
		s.log.Warn("media: recording an access", "media", m.ServerName+"/"+m.MediaID, "err", err)
	}
}

// setQuarantine marks media as quarantined or not. Media not stored here
// (remote media never fetched) gets a placeholder row, so that it is never
// fetched while quarantined. It reports whether a row was changed.
func (s *Service) setQuarantine(ctx context.Context, server, mediaID string, on bool) (bool, error) {
	var res interface{ RowsAffected() (int64, error) }
	var err error
	if on && server != s.serverName {
		res, err = s.db.Exec(ctx, `INSERT INTO media (server_name, media_id, created_ts, last_access_ts, quarantined)
			VALUES ($1, $2, $3, $3, $4) ON CONFLICT (server_name, media_id) DO UPDATE SET quarantined = excluded.quarantined`,
			server, mediaID, s.nowMS(), true)
	} else {
		res, err = s.db.Exec(ctx, `UPDATE media SET quarantined = $3 WHERE server_name = $1 AND media_id = $2`, server, mediaID, on)
	}
	if err != nil {
		return false, fmt.Errorf("media: quarantine of %s/%s: %w", server, mediaID, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// thumbRow is one row of media_thumbnails.
type thumbRow struct {
	Width, Height int
	Method        string
	Animated      bool
	ContentType   string
	Size          int64
	SHA256        string
}

// getThumbnail returns a stored thumbnail, or nil.
func (s *Service) getThumbnail(ctx context.Context, server, mediaID string, w, h int, method string, animated bool) (*thumbRow, error) {
	t := thumbRow{Width: w, Height: h, Method: method, Animated: animated}
	err := s.db.QueryRow(ctx, `SELECT content_type, size_bytes, sha256 FROM media_thumbnails
		WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6`,
		server, mediaID, w, h, method, animated).Scan(&t.ContentType, &t.Size, &t.SHA256)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("media: reading a thumbnail of %s/%s: %w", server, mediaID, err)
	}
	return &t, nil
}

// putThumbnail records a thumbnail whose content is stored.
func (s *Service) putThumbnail(ctx context.Context, server, mediaID string, t *thumbRow) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media_thumbnails
		(server_name, media_id, width, height, method, animated, content_type, size_bytes, sha256)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		server, mediaID, t.Width, t.Height, t.Method, t.Animated, t.ContentType, t.Size, t.SHA256)
	if err != nil {
		return fmt.Errorf("media: storing a thumbnail of %s/%s: %w", server, mediaID, err)
	}
	return nil
}

// deleteMedia removes media and its thumbnails, and their content where
// nothing else refers to it. It reports whether the media existed.
func (s *Service) deleteMedia(ctx context.Context, server, mediaID string) (bool, error) {
	var hashes []string
	rows, err := s.db.Query(ctx, `SELECT sha256 FROM media WHERE server_name = $1 AND media_id = $2
		UNION SELECT sha256 FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, mediaID)
	if err != nil {
		return false, fmt.Errorf("media: deleting %s/%s: %w", server, mediaID, err)
	}
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return false, err
		}
		if h != "" {
			hashes = append(hashes, h)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}
	// Holding the hashes' locks, no upload can start referring to one of
	// them between the check below and the removal of the file.
	unlock := s.locks.lock(hashes...)
	defer unlock()
	var existed bool
	var orphans []string
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM media WHERE server_name = $1 AND media_id = $2`, server, mediaID)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		existed = n > 0
		if _, err := tx.Exec(ctx, `DELETE FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, mediaID); err != nil {
			return err
		}
		orphans = orphans[:0]
		for _, h := range hashes {
			var refs int
			if err := tx.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) +
				(SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)`, h).Scan(&refs); err != nil {
				return err
			}
			if refs == 0 {
				orphans = append(orphans, h)
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("media: deleting %s/%s: %w", server, mediaID, err)
	}
	for _, h := range orphans {
		if err := s.store.Delete(h); err != nil {
			s.log.Warn("media: removing content", "sha256", h, "err", err)
		}
	}
	return existed, nil
}

// mediaRef names one media item.
type mediaRef struct{ Server, MediaID string }

// listMedia returns up to limit media items chosen by a WHERE clause over
// the media table ($1 … are args).
func (s *Service) listMedia(ctx context.Context, where string, limit int, args ...any) ([]mediaRef, error) {
	rows, err := s.db.Query(ctx, `SELECT server_name, media_id FROM media WHERE `+where+
		fmt.Sprintf(` ORDER BY last_access_ts LIMIT %d`, limit), args...)
	if err != nil {
		return nil, fmt.Errorf("media: listing: %w", err)
	}
	defer rows.Close()
	var out []mediaRef
	for rows.Next() {
		var r mediaRef
		if err := rows.Scan(&r.Server, &r.MediaID); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// hashLocks serialises, per content hash, storing content and recording a
// reference to it against deleting unreferenced content.
type hashLocks struct {
	stripes [64]sync.Mutex
}

func stripe(hash string) int {
	h := fnv.New32a()
	h.Write([]byte(hash))
	return int(h.Sum32() % 64)
}

// lock takes the locks of hashes (in a fixed order, so that two callers
// never deadlock) and returns the function releasing them.
func (l *hashLocks) lock(hashes ...string) func() {
	idx := make([]int, 0, len(hashes))
	for _, h := range hashes {
		idx = append(idx, stripe(h))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		l.stripes[i].Lock()
	}
	return func() {
		for _, i := range idx {
			l.stripes[i].Unlock()
		}
	}
}
