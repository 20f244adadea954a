package media

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Remote media is fetched from its server with the federation media
// endpoints (/_matrix/federation/v1/media/download and /thumbnail: signed
// requests, multipart answers whose second part holds the bytes or a
// Location to fetch them from), falling back to the legacy
// /_matrix/media/v3 endpoints for servers that do not know them. Fetched
// media is cached like local media (content-addressed, one row per mxc://
// URI) and served from the cache afterwards; thumbnails fetched from the
// remote server are cached per requested size.

// fetchSlack is added to timeout_ms for the whole fetch of remote media.
const fetchSlack = 60 * time.Second

// maxMetadataBytes bounds the JSON part of a multipart media answer.
const maxMetadataBytes = 64 << 10

// remoteMedia returns remote media, from the cache or fetched now.
func (s *Service) remoteMedia(ctx context.Context, req request) (*mediaRow, error) {
	server, mediaID := req.server, req.mediaID
	m, err := s.getMedia(ctx, server, mediaID)
	if err != nil || (m != nil && (m.Quarantined || m.ready())) {
		return m, err
	}
	if s.fed == nil {
		return nil, httpx.NotFound("This server does not fetch remote media")
	}
	_, err, _ = s.flight.Do("remote "+server+"/"+mediaID, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), req.wait+fetchSlack)
		defer cancel()
		return nil, s.fetchRemote(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	if m, err = s.getMedia(ctx, server, mediaID); err == nil && (m == nil || !m.ready()) {
		err = httpx.NotFound("Media not found")
	}
	return m, err
}

// fetchRemote downloads remote media and caches it.
func (s *Service) fetchRemote(ctx context.Context, req request) error {
	server, mediaID := req.server, req.mediaID
	q := url.Values{"timeout_ms": {strconv.FormatInt(req.wait.Milliseconds(), 10)}}
	body, header, closeFn, err := s.fetch(ctx, server,
		"/_matrix/federation/v1/media/download/"+mediaID+"?"+q.Encode(),
		"/_matrix/media/v3/download/"+url.PathEscape(server)+"/"+mediaID+"?allow_remote=false&"+q.Encode(), req.legacy)
	if err != nil {
		return s.remoteFailure(server, mediaID, err, false)
	}
	defer closeFn()
	st, err := s.stage(body, s.cfg.MaxUploadBytes)
	if err != nil {
		return s.remoteFailure(server, mediaID, err, false)
	}
	ctype := storableText(header.Get("Content-Type"), 255)
	if ctype == "" {
		ctype = octetStream
	}
	c := st.content(ctype, storableText(dispositionFilename(header.Get("Content-Disposition")), maxFilenameBytes))
	return s.commitStaged(st, func() error { return s.putMedia(ctx, server, mediaID, "", c, s.nowMS()) })
}

// thumbnailTypes are the types a remote thumbnail may have.
var thumbnailTypes = map[string]bool{"image/jpeg": true, "image/png": true, "image/apng": true, "image/gif": true, "image/webp": true}

// remoteThumbnail returns a thumbnail of remote media fetched from its
// server (cached per requested size and method).
func (s *Service) remoteThumbnail(ctx context.Context, req request, p thumbParams) (*thumbRow, error) {
	t, err := s.getThumbnail(ctx, req.server, req.mediaID, p.width, p.height, p.method, p.animated)
	if err != nil || t != nil {
		return t, err
	}
	if s.fed == nil {
		return nil, httpx.NotFound("This server does not fetch remote media")
	}
	key := fmt.Sprintf("remote thumb %s/%s %dx%d %s %v", req.server, req.mediaID, p.width, p.height, p.method, p.animated)
	v, err, _ := s.flight.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), req.wait+fetchSlack)
		defer cancel()
		return s.fetchRemoteThumbnail(ctx, req, p)
	})
	if err != nil {
		return nil, err
	}
	return v.(*thumbRow), nil
}

func (s *Service) fetchRemoteThumbnail(ctx context.Context, req request, p thumbParams) (*thumbRow, error) {
	q := url.Values{
		"width": {strconv.Itoa(p.width)}, "height": {strconv.Itoa(p.height)}, "method": {p.method},
		"animated": {strconv.FormatBool(p.animated)}, "timeout_ms": {strconv.FormatInt(req.wait.Milliseconds(), 10)},
	}
	body, header, closeFn, err := s.fetch(ctx, req.server,
		"/_matrix/federation/v1/media/thumbnail/"+req.mediaID+"?"+q.Encode(),
		"/_matrix/media/v3/thumbnail/"+url.PathEscape(req.server)+"/"+req.mediaID+"?allow_remote=false&"+q.Encode(), req.legacy)
	if err != nil {
		return nil, s.remoteFailure(req.server, req.mediaID, err, true)
	}
	defer closeFn()
	ctype, _, _ := mime.ParseMediaType(header.Get("Content-Type"))
	if !thumbnailTypes[ctype] {
		return nil, httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "%s sent a thumbnail of type %q", req.server, ctype)
	}
	st, err := s.stage(body, s.cfg.MaxUploadBytes)
	if err != nil {
		return nil, s.remoteFailure(req.server, req.mediaID, err, true)
	}
	t := &thumbRow{Width: p.width, Height: p.height, Method: p.method, Animated: p.animated, ContentType: ctype, Size: st.size, SHA256: st.hash}
	err = s.commitStaged(st, func() error {
		if err := s.ensureRemoteRow(ctx, req.server, req.mediaID); err != nil {
			return err
		}
		return s.putThumbnail(ctx, req.server, req.mediaID, t)
	})
	return t, err
}

// fetch asks server for media with the federation endpoint fedURI or the
// legacy client endpoint legacyURI. Requests made for the authenticated
// client endpoints use the federation endpoint, and the legacy one only
// when the server does not know it (a server older than Matrix 1.11);
// requests made for the deprecated unauthenticated endpoints (legacyFirst)
// use the legacy endpoint first, as Synapse does, and the federation one
// when the legacy one does not give the media (it may be frozen there). It
// returns the media bytes, their headers and the function that releases
// the connection.
func (s *Service) fetch(ctx context.Context, server, fedURI, legacyURI string, legacyFirst bool) (io.Reader, textproto.MIMEHeader, func(), error) {
	order := []bool{true, false} // federation endpoint?
	if legacyFirst {
		order = []bool{false, true}
	}
	for i, federated := range order {
		uri := legacyURI
		if federated {
			uri = fedURI
		}
		resp, err := s.fed.Client.DoRaw(ctx, server, http.MethodGet, uri, nil, federated)
		if err != nil {
			return nil, nil, nil, err
		}
		if i == 0 && (isUnrecognized(resp) || legacyFirst && resp.StatusCode == http.StatusNotFound) {
			resp.Body.Close()
			continue
		}
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
			return nil, nil, nil, remoteError(server, resp)
		}
		if !federated {
			return resp.Body, textproto.MIMEHeader(resp.Header), func() { resp.Body.Close() }, nil
		}
		body, header, closeFn, err := s.multipartMedia(ctx, resp)
		if err != nil {
			resp.Body.Close()
			return nil, nil, nil, err
		}
		return body, header, func() { closeFn(); resp.Body.Close() }, nil
	}
	panic("unreachable")
}

// isUnrecognized reports whether a server answered that it does not know
// the endpoint: 404 or 405 with M_UNRECOGNIZED or a body that is not JSON
// (older servers), or 400 M_UNRECOGNIZED (older Synapse). It may consume a
// little of the body of such an error.
func isUnrecognized(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest:
	default:
		return false
	}
	var e struct {
		ErrCode string `json:"errcode"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBytes))
	resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(raw), resp.Body))
	if json.Unmarshal(raw, &e) == nil && e.ErrCode == "M_UNRECOGNIZED" {
		return true
	}
	return resp.StatusCode != http.StatusBadRequest && !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))
}

// multipartMedia reads a federation media answer: a JSON metadata part,
// then the media part, whose body is returned, or whose Location is
// followed (through the address policy) to get the bytes.
func (s *Service) multipartMedia(ctx context.Context, resp *http.Response) (io.Reader, textproto.MIMEHeader, func(), error) {
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return nil, nil, nil, fmt.Errorf("answer of type %q, want multipart/mixed", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("multipart answer without metadata: %w", err)
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(meta, maxMetadataBytes)); err != nil {
		return nil, nil, nil, err
	}
	part, err := mr.NextPart()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("multipart answer without media: %w", err)
	}
	loc := part.Header.Get("Location")
	if loc == "" {
		return part, part.Header, func() {}, nil
	}
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, nil, nil, fmt.Errorf("bad Location %q", loc)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, nil, err
	}
	redirected, err := s.webClient().Do(req)
	if err != nil {
		return nil, nil, nil, err
	}
	if redirected.StatusCode != http.StatusOK {
		redirected.Body.Close()
		return nil, nil, nil, fmt.Errorf("Location %s answered %d", loc, redirected.StatusCode)
	}
	return redirected.Body, textproto.MIMEHeader(redirected.Header), func() { redirected.Body.Close() }, nil
}

// webClient is the client for the Location of remote media: the
// federation address policy applies to it and to its redirects.
func (s *Service) webClient() *http.Client {
	s.webOnce.Do(func() { s.web = federation.WebClient(s.fed.Policy, nil, 5*time.Minute) })
	return s.web
}

// remoteError reads a non-200 answer of a remote server.
func remoteError(server string, resp *http.Response) error {
	e := &federation.RemoteError{Destination: server, Status: resp.StatusCode}
	var body struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBytes))
	if json.Unmarshal(raw, &body) == nil {
		e.ErrCode, e.Message = body.ErrCode, body.Error
	}
	return e
}

// remoteFailure turns a failed fetch into the client's answer: the remote
// server's not-found, not-yet-uploaded and cannot-thumbnail pass through,
// oversized media is 502 M_TOO_LARGE, anything else 502.
func (s *Service) remoteFailure(server, mediaID string, err error, thumbnail bool) error {
	var re *federation.RemoteError
	switch {
	case errors.Is(err, errTooLarge):
		return httpx.NewError(http.StatusBadGateway, "M_TOO_LARGE", "The remote media is larger than %d bytes", s.cfg.MaxUploadBytes)
	case errors.As(err, &re) && re.ErrCode == "M_TOO_LARGE":
		return httpx.NewError(http.StatusBadGateway, "M_TOO_LARGE", "The remote media is too large")
	case errors.As(err, &re) && re.ErrCode == "M_NOT_YET_UPLOADED":
		return notYetUploaded()
	case errors.As(err, &re) && re.Status == http.StatusNotFound:
		return httpx.NotFound("Media not found on %s", server)
	case errors.As(err, &re) && thumbnail && re.Status == http.StatusBadRequest:
		return cannotThumbnail()
	case errors.Is(err, errStaging):
		return err // the server's own storage failed
	}
	s.log.Info("media: fetching remote media failed", "media", server+"/"+mediaID, "err", err)
	return httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch the media from %s", server)
}

// storableText is s if it can be stored (valid UTF-8 without NUL, at most
// max bytes), else "".
func storableText(s string, max int) string {
	if len(s) > max || !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return ""
	}
	return s
}

// dispositionFilename is the filename of a Content-Disposition header, or "".
func dispositionFilename(cd string) string {
	if cd == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(cd)
	if err != nil {
		return ""
	}
	return params["filename"]
}
