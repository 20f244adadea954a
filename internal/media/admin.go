package media

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/palpo-go/palpo/internal/httpx"
)

// The media admin API, at Synapse's paths so that existing admin tools
// work: delete one item, quarantine or release it, purge cached remote media
// and delete local media not accessed since a date. Only server admins may
// use it. The same operations back the `palpo media` commands.

// adminRoutes registers the media admin endpoints.
func (s *Service) adminRoutes(rt *httpx.Router) {
	rt.Authed("DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}", s.admin(s.handleAdminDelete))
	rt.Authed("POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}", s.admin(s.handleQuarantine(true)))
	rt.Authed("POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}", s.admin(s.handleQuarantine(false)))
	rt.Authed("POST /_synapse/admin/v1/purge_media_cache", s.admin(s.handlePurgeRemote))
	rt.Authed("POST /_synapse/admin/v1/media/delete", s.admin(s.handleDeleteLocal))
}

// admin wraps an admin endpoint: the (optional, ignored) JSON body is
// checked first, then the caller must be a server admin.
func (s *Service) admin(h httpx.AuthHandler) httpx.AuthHandler {
	return func(r *http.Request, p *httpx.Principal) (any, error) {
		if r.Method != http.MethodGet && r.Method != http.MethodDelete {
			if err := httpx.DecodeOptionalJSON(r, &struct{}{}); err != nil {
				return nil, err
			}
		}
		if !p.IsAdmin {
			return nil, httpx.Forbidden("You are not a server admin")
		}
		return h(r, p)
	}
}

// handleAdminDelete is DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}.
func (s *Service) handleAdminDelete(r *http.Request, _ *httpx.Principal) (any, error) {
	server, id, err := mxcPath(r)
	if err != nil {
		return nil, err
	}
	existed, err := s.DeleteMedia(r.Context(), server, id)
	if err != nil {
		return nil, err
	}
	if !existed {
		return nil, httpx.NotFound("Media not found")
	}
	return map[string]any{"deleted_media": []string{id}, "total": 1}, nil
}

// handleQuarantine is POST /_synapse/admin/v1/media/[un]quarantine/{serverName}/{mediaId}.
func (s *Service) handleQuarantine(on bool) httpx.AuthHandler {
	return func(r *http.Request, _ *httpx.Principal) (any, error) {
		server, id, err := mxcPath(r)
		if err != nil {
			return nil, err
		}
		changed, err := s.Quarantine(r.Context(), server, id, on)
		if err != nil {
			return nil, err
		}
		if !changed {
			return nil, httpx.NotFound("Media not found")
		}
		return httpx.Empty, nil
	}
}

// beforeParam reads the required before_ts query parameter (ms).
func beforeParam(r *http.Request) (time.Time, error) {
	v := r.URL.Query().Get("before_ts")
	if v == "" {
		return time.Time{}, httpx.MissingParam("before_ts is required")
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return time.Time{}, httpx.InvalidParam("before_ts must be a timestamp in milliseconds")
	}
	return time.UnixMilli(ms), nil
}

// handlePurgeRemote is POST /_synapse/admin/v1/purge_media_cache?before_ts=.
func (s *Service) handlePurgeRemote(r *http.Request, _ *httpx.Principal) (any, error) {
	before, err := beforeParam(r)
	if err != nil {
		return nil, err
	}
	n, err := s.PurgeRemote(r.Context(), before)
	if err != nil {
		return nil, err
	}
	return map[string]int{"deleted": n}, nil
}

// handleDeleteLocal is POST /_synapse/admin/v1/media/delete?before_ts=.
func (s *Service) handleDeleteLocal(r *http.Request, _ *httpx.Principal) (any, error) {
	before, err := beforeParam(r)
	if err != nil {
		return nil, err
	}
	deleted, err := s.DeleteLocalBefore(r.Context(), before)
	if err != nil {
		return nil, err
	}
	if deleted == nil {
		deleted = []string{}
	}
	return map[string]any{"deleted_media": deleted, "total": len(deleted)}, nil
}

// DeleteMedia removes one media item (local, or remote and cached) with its
// thumbnails; content no other item shares is removed from the storage. It
// reports whether the item existed.
func (s *Service) DeleteMedia(ctx context.Context, server, mediaID string) (bool, error) {
	return s.deleteMedia(ctx, server, mediaID)
}

// Quarantine marks media as quarantined (never served, never fetched
// again) or releases it. Remote media can be quarantined before it is ever
// fetched. It reports whether anything changed (false: unknown local media).
func (s *Service) Quarantine(ctx context.Context, server, mediaID string, on bool) (bool, error) {
	return s.setQuarantine(ctx, server, mediaID, on)
}

// purgeBatch is how many items a purge deletes per query.
const purgeBatch = 200

// PurgeRemote deletes cached remote media (and remote thumbnails) not
// downloaded since before; quarantined media stays. It returns how many
// items it deleted.
func (s *Service) PurgeRemote(ctx context.Context, before time.Time) (int, error) {
	ids, err := s.deleteWhere(ctx, "server_name <> $1 AND last_access_ts < $2 AND quarantined = $3",
		s.serverName, before.UnixMilli(), false)
	return len(ids), err
}

// DeleteLocalBefore deletes local media not downloaded since before and
// returns the media IDs deleted. IDs still waiting for their upload stay.
func (s *Service) DeleteLocalBefore(ctx context.Context, before time.Time) ([]string, error) {
	return s.deleteWhere(ctx, "server_name = $1 AND last_access_ts < $2 AND uploaded_ts <> 0", s.serverName, before.UnixMilli())
}

// deleteWhere deletes, batch by batch, the media a WHERE clause selects.
func (s *Service) deleteWhere(ctx context.Context, where string, args ...any) ([]string, error) {
	var deleted []string
	for {
		refs, err := s.listMedia(ctx, where, purgeBatch, args...)
		if err != nil {
			return deleted, err
		}
		for _, ref := range refs {
			if _, err := s.deleteMedia(ctx, ref.Server, ref.MediaID); err != nil {
				return deleted, err
			}
			deleted = append(deleted, ref.MediaID)
		}
		if len(refs) < purgeBatch {
			return deleted, nil
		}
	}
}
