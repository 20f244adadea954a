package media

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"io"
	"net/http"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/httpx"
)

// uploadRoutes registers the upload endpoints and the media configuration.
func (s *Service) uploadRoutes(rt *httpx.Router) {
	rt.Raw("POST /_matrix/media/v3/upload", raw(s.authed(false, s.handleUpload)))
	rt.Raw("PUT /_matrix/media/v3/upload/{serverName}/{mediaId}", raw(s.authed(false, s.handleUploadTo)))
	rt.Authed("POST /_matrix/media/v1/create", s.handleCreate)
	rt.AuthedGuestOK("GET /_matrix/client/v1/media/config", s.handleConfig)
	rt.AuthedGuestOK("GET /_matrix/media/v3/config", s.handleConfig) // deprecated path, same answer
}

// handleConfig is GET /_matrix/client/v1/media/config.
func (s *Service) handleConfig(*http.Request, *httpx.Principal) (any, error) {
	return map[string]int64{"m.upload.size": s.cfg.MaxUploadBytes}, nil
}

// handleCreate is POST /_matrix/media/v1/create: a media ID whose content
// comes later with PUT /upload/{serverName}/{mediaId}.
func (s *Service) handleCreate(r *http.Request, p *httpx.Principal) (any, error) {
	now := s.now()
	expires := now.Add(s.cfg.UnusedExpiry).UnixMilli()
	id := newMediaID()
	if err := s.createPending(r.Context(), id, p.UserID, now.UnixMilli(), expires); err != nil {
		return nil, err
	}
	return map[string]any{"content_uri": mxcURI(s.serverName, id), "unused_expires_at": expires}, nil
}

// handleUpload is POST /_matrix/media/v3/upload.
func (s *Service) handleUpload(w http.ResponseWriter, r *http.Request, p *httpx.Principal) error {
	c, st, err := s.receiveUpload(r)
	if err != nil {
		return err
	}
	id := newMediaID()
	err = s.commitStaged(st, func() error { return s.putMedia(r.Context(), s.serverName, id, p.UserID, c, s.nowMS()) })
	if err != nil {
		return err
	}
	s.pregenerate(r.Context(), s.serverName, id, c)
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"content_uri": mxcURI(s.serverName, id)})
	return nil
}

// handleUploadTo is PUT /_matrix/media/v3/upload/{serverName}/{mediaId}:
// the content of an ID made with /create, by the user who made it, once.
func (s *Service) handleUploadTo(w http.ResponseWriter, r *http.Request, p *httpx.Principal) error {
	server, id, err := mxcPath(r)
	if err != nil {
		return err
	}
	if server != s.serverName {
		return httpx.NotFound("Media IDs of %s are not created here", server)
	}
	m, err := s.getMedia(r.Context(), server, id)
	if err != nil {
		return err
	}
	switch {
	case m == nil || (!m.ready() && m.Expires <= s.nowMS()):
		return httpx.NotFound("Unknown or expired media ID")
	case m.UserID != p.UserID:
		return httpx.Forbidden("This media ID was created by another user")
	case m.ready():
		return cannotOverwrite()
	}
	c, st, err := s.receiveUpload(r)
	if err != nil {
		return err
	}
	var won bool
	err = s.commitStaged(st, func() error {
		var err error
		won, err = s.completePending(r.Context(), id, c, s.nowMS())
		return err
	})
	if err != nil {
		return err
	}
	if !won {
		return cannotOverwrite()
	}
	s.uploads.broadcast()
	s.pregenerate(r.Context(), server, id, c)
	httpx.WriteJSON(w, http.StatusOK, httpx.Empty)
	return nil
}

func cannotOverwrite() error {
	return httpx.NewError(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "This media already has its content")
}

// maxFilenameBytes bounds the filename of an upload.
const maxFilenameBytes = 1024

// receiveUpload validates an upload's Content-Type and filename and stages
// its body, refusing more than max_upload_bytes with 413 M_TOO_LARGE.
func (s *Service) receiveUpload(r *http.Request) (content, *staged, error) {
	ctype := strings.TrimSpace(r.Header.Get("Content-Type"))
	if ctype == "" {
		ctype = octetStream
	}
	if !utf8.ValidString(ctype) || len(ctype) > 255 {
		return content{}, nil, httpx.InvalidParam("The Content-Type header is not a valid media type")
	}
	filename := r.URL.Query().Get("filename")
	if len(filename) > maxFilenameBytes {
		return content{}, nil, httpx.InvalidParam("filename is longer than %d bytes", maxFilenameBytes)
	}
	limit := s.cfg.MaxUploadBytes
	if r.ContentLength > limit {
		return content{}, nil, tooLargeUpload(limit)
	}
	st, err := s.stage(r.Body, limit)
	switch {
	case errors.Is(err, errTooLarge):
		return content{}, nil, tooLargeUpload(limit)
	case errors.Is(err, errStaging):
		return content{}, nil, err
	case err != nil:
		return content{}, nil, httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Could not read the upload: %v", err)
	}
	return st.content(ctype, filename), st, nil
}

func tooLargeUpload(limit int64) error {
	return httpx.TooLarge("Cannot upload files larger than %d bytes", limit)
}

// errTooLarge is stage's error for content over its limit.
var errTooLarge = errors.New("media: content too large")

// errStaging marks a failure of the storage (not of the sender) in stage.
var errStaging = errors.New("media: staging")

// staged is content written to a staged file, not committed yet.
type staged struct {
	f      *os.File
	hash   string
	size   int64
	format string // image format, if DecodeConfig recognises one
	width  int
	height int
}

// stage copies r into a new staged file, hashing it on the way; more than
// limit bytes is errTooLarge. A failure of r is returned as it is.
func (s *Service) stage(r io.Reader, limit int64) (*staged, error) {
	f, err := s.store.Stage()
	if err != nil {
		return nil, errors.Join(errStaging, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, limit+1))
	if err != nil {
		s.store.Discard(f)
		var pe *os.PathError
		if errors.As(err, &pe) { // the write failed, not the read
			return nil, errors.Join(errStaging, err)
		}
		return nil, err
	}
	if n > limit {
		s.store.Discard(f)
		return nil, errTooLarge
	}
	st := &staged{f: f, hash: hex.EncodeToString(h.Sum(nil)), size: n}
	if _, err := f.Seek(0, io.SeekStart); err == nil {
		if cfg, format, err := image.DecodeConfig(bufio.NewReader(f)); err == nil && thumbnailable[format] {
			st.format, st.width, st.height = format, cfg.Width, cfg.Height
		}
	}
	return st, nil
}

// content describes the staged bytes as media of the given type and name.
// Only content declared as an image is treated as one.
func (st *staged) content(ctype, filename string) content {
	c := content{SHA256: st.hash, Size: st.size, ContentType: ctype, Filename: filename}
	if strings.HasPrefix(strings.ToLower(ctype), "image/") {
		c.ImageFormat, c.Width, c.Height = st.format, st.width, st.height
	}
	return c
}

// commitStaged makes st durable and runs record (which writes the row that
// refers to it) under the lock of its hash, so that a concurrent deletion
// of the same bytes cannot remove the file in between.
func (s *Service) commitStaged(st *staged, record func() error) error {
	unlock := s.locks.lock(st.hash)
	defer unlock()
	if err := s.store.Commit(st.f, st.hash); err != nil {
		return err
	}
	return record()
}

// pregenerate makes the configured thumbnail sizes of new local image
// media. Failures are logged: the upload itself succeeded.
func (s *Service) pregenerate(ctx context.Context, server, mediaID string, c content) {
	if c.ImageFormat == "" || len(s.thumbSizes) == 0 || int64(c.Width)*int64(c.Height) > s.cfg.MaxImagePixels {
		return
	}
	m := &mediaRow{ServerName: server, MediaID: mediaID, ContentType: c.ContentType, SHA256: c.SHA256,
		ImageFormat: c.ImageFormat, Width: c.Width, Height: c.Height}
	ctx = context.WithoutCancel(ctx)
	src := s.newSource(m)
	for _, size := range s.thumbSizes {
		p := thumbParams{width: size.Width, height: size.Height, method: size.Method}
		if _, _, err := s.localThumbnail(ctx, m, src, p); err != nil {
			s.log.Warn("media: pre-generating a thumbnail", "media", server+"/"+mediaID, "size", size, "err", err)
			return
		}
	}
}
