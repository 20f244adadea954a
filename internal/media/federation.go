package media

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"

	"github.com/palpo-go/palpo/internal/httpx"
)

// The federation media endpoints serve this server's own media to other
// servers (never media cached from a third server): signed requests,
// multipart/mixed answers of an empty JSON metadata object and the bytes.

// maxFederationRequestBytes bounds the body of a federation media request
// (a GET: nothing is expected).
const maxFederationRequestBytes = 64 << 10

// federationRoutes registers GET /_matrix/federation/v1/media/download and
// /thumbnail.
func (s *Service) federationRoutes(rt *httpx.Router) {
	if s.fed == nil {
		return
	}
	rt.Raw("GET /_matrix/federation/v1/media/download/{mediaId}", raw(s.federated(s.handleFederationDownload)))
	rt.Raw("GET /_matrix/federation/v1/media/thumbnail/{mediaId}", raw(s.federated(s.handleFederationThumbnail)))
}

// federated authenticates a federation request (X-Matrix) before h.
func (s *Service) federated(h rawHandler) rawHandler {
	return func(w http.ResponseWriter, r *http.Request) error {
		r.Body = http.MaxBytesReader(w, r.Body, maxFederationRequestBytes)
		if _, err := s.fed.Authenticate(r); err != nil {
			return err
		}
		return h(w, r)
	}
}

// federationMedia returns the local media a federation request names.
func (s *Service) federationMedia(r *http.Request) (*mediaRow, error) {
	id := r.PathValue("mediaId")
	if !validMediaID(id) {
		return nil, httpx.InvalidParam("A media ID consists of A-Z, a-z, 0-9, _ and -")
	}
	wait, err := waitParam(r)
	if err != nil {
		return nil, err
	}
	m, err := s.awaitLocal(r.Context(), id, wait)
	if err != nil {
		return nil, err
	}
	if m.Quarantined {
		return nil, httpx.NotFound("This media is quarantined")
	}
	s.touch(r.Context(), m)
	return m, nil
}

// handleFederationDownload is GET /_matrix/federation/v1/media/download/{mediaId}.
func (s *Service) handleFederationDownload(w http.ResponseWriter, r *http.Request) error {
	m, err := s.federationMedia(r)
	if err != nil {
		return err
	}
	h := http.Header{}
	setDownloadHeaders(h, m.ContentType, m.Filename)
	// The receiving server applies its own safety rules; it gets the type
	// as uploaded.
	h.Set("Content-Type", m.ContentType)
	return s.writeMultipart(w, m.SHA256, h)
}

// handleFederationThumbnail is GET /_matrix/federation/v1/media/thumbnail/{mediaId}.
func (s *Service) handleFederationThumbnail(w http.ResponseWriter, r *http.Request) error {
	p, err := parseThumbParams(r)
	if err != nil {
		return err
	}
	m, err := s.federationMedia(r)
	if err != nil {
		return err
	}
	t, original, err := s.localThumbnail(r.Context(), m, s.newSource(m), p)
	if err != nil {
		return err
	}
	hash, ctype := m.SHA256, "image/"+m.ImageFormat
	if !original {
		hash, ctype = t.SHA256, t.ContentType
	}
	h := http.Header{}
	thumbnailHeaders(ctype)(h)
	return s.writeMultipart(w, hash, h)
}

// writeMultipart answers with the multipart/mixed body of the federation
// media endpoints: {} as metadata, then the content with the headers of
// header (Content-Type and Content-Disposition).
func (s *Service) writeMultipart(w http.ResponseWriter, hash string, header http.Header) error {
	c, err := s.openContent(hash)
	if err != nil {
		return err
	}
	defer c.Close()
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err == nil {
		_, err = meta.Write([]byte("{}"))
	}
	var part io.Writer
	if err == nil {
		part, err = mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":        {header.Get("Content-Type")},
			"Content-Disposition": {header.Get("Content-Disposition")},
		})
	}
	if err == nil {
		_, err = io.Copy(part, c)
	}
	if err == nil {
		err = mw.Close()
	}
	if err != nil {
		s.log.Debug("media: writing a federation answer", "err", err)
	}
	return nil
}
