package media

import (
	"context"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Downloads. The authenticated endpoints (/_matrix/client/v1/media/…) serve
// any user, guests included. The deprecated unauthenticated ones
// (/_matrix/media/v3/download and /thumbnail) are frozen as the spec asks
// from Matrix 1.12 on: they only serve media stored before
// media.legacy_freeze (by default none, as Synapse with
// enable_authenticated_media), and answer 404 M_NOT_FOUND for the rest, so
// that media cannot be fetched without an account of this server.

// downloadRoutes registers the download and thumbnail endpoints.
func (s *Service) downloadRoutes(rt *httpx.Router) {
	download := raw(s.authed(true, func(w http.ResponseWriter, r *http.Request, _ *httpx.Principal) error {
		return s.serveDownload(w, r, false)
	}))
	rt.Raw("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}", download)
	rt.Raw("GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", download)
	rt.Raw("GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", raw(s.authed(true,
		func(w http.ResponseWriter, r *http.Request, _ *httpx.Principal) error {
			return s.serveThumbnail(w, r, false)
		})))

	legacy := raw(func(w http.ResponseWriter, r *http.Request) error { return s.serveDownload(w, r, true) })
	rt.Raw("GET /_matrix/media/v3/download/{serverName}/{mediaId}", legacy)
	rt.Raw("GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}", legacy)
	rt.Raw("GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}", raw(func(w http.ResponseWriter, r *http.Request) error {
		return s.serveThumbnail(w, r, true)
	}))
}

// request is what a download or thumbnail request names.
type request struct {
	server, mediaID string
	wait            time.Duration
	legacy          bool // an unauthenticated, deprecated endpoint
	allowRemote     bool
}

// parseRequest reads the common parameters of downloads and thumbnails.
func parseRequest(r *http.Request, legacy bool) (request, error) {
	server, id, err := mxcPath(r)
	if err != nil {
		return request{}, err
	}
	wait, err := waitParam(r)
	if err != nil {
		return request{}, err
	}
	allowRemote, err := httpx.QueryBool(r, "allow_remote", true)
	if err != nil {
		return request{}, err
	}
	return request{server: server, mediaID: id, wait: wait, legacy: legacy, allowRemote: allowRemote || !legacy}, nil
}

// frozen is the answer of a legacy endpoint for media it may not serve.
func frozen() error {
	return httpx.NotFound("This media is only served by the authenticated endpoints (/_matrix/client/v1/media/…)")
}

// legacyServes reports whether the unauthenticated endpoints may serve
// media stored at ms.
func (s *Service) legacyServes(ms int64) bool { return time.UnixMilli(ms).Before(s.legacyCutoff) }

// serveDownload answers the download endpoints.
func (s *Service) serveDownload(w http.ResponseWriter, r *http.Request, legacy bool) error {
	req, err := parseRequest(r, legacy)
	if err != nil {
		return err
	}
	m, err := s.findMedia(r.Context(), req)
	if err != nil {
		return err
	}
	filename := m.Filename
	if fn := r.PathValue("fileName"); fn != "" {
		filename = fn
	}
	return s.serveContent(w, r, m.SHA256, m.Uploaded, func(h http.Header) { setDownloadHeaders(h, m.ContentType, filename) })
}

// findMedia returns the media a download names, local or remote (fetched
// and cached when needed), refusing quarantined media and, on the legacy
// endpoints, frozen media.
func (s *Service) findMedia(ctx context.Context, req request) (*mediaRow, error) {
	var m *mediaRow
	var err error
	switch {
	case req.server == s.serverName:
		m, err = s.awaitLocal(ctx, req.mediaID, req.wait)
	case req.legacy && (!req.allowRemote || !s.legacyServes(s.nowMS())):
		// Fetching now would make the media new, hence frozen.
		if m, err = s.getMedia(ctx, req.server, req.mediaID); err == nil && (m == nil || !m.ready()) {
			return nil, httpx.NotFound("Remote media not cached here")
		}
	default:
		m, err = s.remoteMedia(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	if m.Quarantined {
		return nil, httpx.NotFound("This media is quarantined")
	}
	if req.legacy && !s.legacyServes(m.Uploaded) {
		return nil, frozen()
	}
	s.touch(ctx, m)
	return m, nil
}

// pollInterval is how often a download waiting for content looks for it
// in the database, in case another process received the upload.
const pollInterval = time.Second

// awaitLocal returns local media, waiting up to wait for the content of
// an ID made with /create: 404 M_NOT_FOUND for an unknown or expired ID,
// 504 M_NOT_YET_UPLOADED when the wait ends first.
func (s *Service) awaitLocal(ctx context.Context, mediaID string, wait time.Duration) (*mediaRow, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		woken := s.uploads.wait()
		m, err := s.getMedia(ctx, s.serverName, mediaID)
		switch {
		case err != nil:
			return nil, err
		case m == nil || (!m.ready() && m.Expires <= s.nowMS()):
			return nil, httpx.NotFound("Media not found")
		case m.ready() || m.Quarantined:
			return m, nil
		}
		select {
		case <-woken:
		case <-time.After(pollInterval):
		case <-deadline.C:
			return nil, notYetUploaded()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func notYetUploaded() error {
	return httpx.NewError(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
}

// serveContent streams stored content (with range requests); headers sets
// the content's headers once it is open. modified is in ms.
func (s *Service) serveContent(w http.ResponseWriter, r *http.Request, hash string, modified int64, headers func(http.Header)) error {
	c, err := s.openContent(hash)
	if err != nil {
		return err
	}
	defer c.Close()
	headers(w.Header())
	w.Header().Set("ETag", `"`+hash+`"`)
	http.ServeContent(w, r, "", time.UnixMilli(modified), c)
	return nil
}

// openContent opens stored content; content missing from the storage
// (removed by hand, a lost disk) is logged and answered as not found.
func (s *Service) openContent(hash string) (Content, error) {
	c, err := s.store.Open(hash)
	if errors.Is(err, os.ErrNotExist) {
		s.log.Error("media: content missing from the storage", "sha256", hash)
		return nil, httpx.NotFound("The media content is missing")
	}
	return c, err
}

// serveThumbnail answers the thumbnail endpoints.
func (s *Service) serveThumbnail(w http.ResponseWriter, r *http.Request, legacy bool) error {
	req, err := parseRequest(r, legacy)
	if err != nil {
		return err
	}
	p, err := parseThumbParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if req.server != s.serverName {
		m, err := s.getMedia(ctx, req.server, req.mediaID)
		if err != nil {
			return err
		}
		switch {
		case m != nil && m.Quarantined:
			return httpx.NotFound("This media is quarantined")
		case m != nil && m.ready() && m.ImageFormat != "":
			// Cached whole: thumbnail it here.
		case legacy && !req.allowRemote:
			return httpx.NotFound("Remote media not cached here")
		case legacy && !s.legacyServes(s.nowMS()):
			return frozen()
		default:
			t, err := s.remoteThumbnail(ctx, req, p)
			if err != nil {
				return err
			}
			if m != nil {
				s.touch(ctx, m)
			}
			return s.serveContent(w, r, t.SHA256, s.nowMS(), thumbnailHeaders(t.ContentType))
		}
	}
	m, err := s.findMedia(ctx, req)
	if err != nil {
		return err
	}
	t, original, err := s.localThumbnail(ctx, m, s.newSource(m), p)
	if err != nil {
		return err
	}
	if original {
		return s.serveContent(w, r, m.SHA256, m.Uploaded, thumbnailHeaders("image/"+m.ImageFormat))
	}
	return s.serveContent(w, r, t.SHA256, m.Uploaded, thumbnailHeaders(t.ContentType))
}

// thumbnailHeaders sets the headers of a thumbnail of type ctype: always
// inline (the spec requires it; thumbnails are images of safe types).
func thumbnailHeaders(ctype string) func(http.Header) {
	return func(h http.Header) { setSafetyHeaders(h, ctype, "inline", thumbnailName(ctype)) }
}

// thumbnailName is the file name given to a thumbnail of a type.
func thumbnailName(ctype string) string {
	switch ctype {
	case "image/jpeg":
		return "thumbnail.jpg"
	case "image/gif":
		return "thumbnail.gif"
	case "image/webp":
		return "thumbnail.webp"
	}
	return "thumbnail.png"
}
