package media

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/charset"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/httpx"
)

// URL previews are off by default (media.url_previews): when on, the
// server fetches whatever URL its users ask about, so the fetches go
// through the federation address policy — loopback, private, link-local and
// other non-public addresses are refused after DNS resolution and on every
// redirect, unless media.url_preview_allow_ranges lets a range through —
// and media.url_preview_deny_hosts / _deny_ranges refuse more. A page gives
// its OpenGraph properties, with the HTML title and description as
// fallbacks; the image of a preview (og:image, or the URL itself when it is
// an image) is stored as media and given as an mxc:// URI. Answers are
// cached for an hour.

// previewTTL is how long a preview is served from the cache.
const previewTTL = time.Hour

// Bounds of what a page contributes to its preview.
const (
	maxOGProperties = 64
	maxOGValueRunes = 1000
	maxDescRunes    = 500
	// maxPreviewURLBytes bounds the URLs previewed (they key the cache).
	maxPreviewURLBytes = 2048
	previewUserAgent   = "Palpo URL preview (Matrix homeserver)"
)

// previewer fetches pages for previews.
type previewer struct {
	client    *http.Client
	denyHosts []string
	maxBytes  int64
}

// newPreviewer builds the preview fetcher of cfg.
func newPreviewer(cfg *config.MediaConfig) (*previewer, error) {
	allow, deny, err := cfg.PreviewRanges()
	if err != nil {
		return nil, err
	}
	p := &previewer{
		client:    federation.WebClient(federation.AddrPolicy{Allow: allow, Deny: deny}, nil, 30*time.Second),
		denyHosts: cfg.PreviewDeniedHosts(),
		maxBytes:  cfg.PreviewMaxBytes,
	}
	p.client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		return p.checkURL(req.URL)
	}
	return p, nil
}

// checkURL refuses URLs that are not http(s) or whose host is denied.
func (p *previewer) checkURL(u *url.URL) error {
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return httpx.InvalidParam("Only http and https URLs can be previewed")
	}
	host := strings.Trim(strings.ToLower(u.Hostname()), ".")
	for _, d := range p.denyHosts {
		if host == d || strings.HasSuffix(host, "."+d) {
			return httpx.Forbidden("URLs of %s are not previewed", host)
		}
	}
	return nil
}

// previewRoutes registers the preview endpoints.
func (s *Service) previewRoutes(rt *httpx.Router) {
	rt.Authed("GET /_matrix/client/v1/media/preview_url", s.handlePreview)
	rt.Authed("GET /_matrix/media/v3/preview_url", s.handlePreview) // deprecated path, same answer
}

// handlePreview is GET /_matrix/client/v1/media/preview_url.
func (s *Service) handlePreview(r *http.Request, _ *httpx.Principal) (any, error) {
	if s.preview == nil {
		return nil, httpx.Forbidden("URL previews are disabled on this server")
	}
	q := r.URL.Query()
	raw := q.Get("url")
	if raw == "" {
		return nil, httpx.MissingParam("url is required")
	}
	if len(raw) > maxPreviewURLBytes {
		return nil, httpx.InvalidParam("url is longer than %d bytes", maxPreviewURLBytes)
	}
	if ts := q.Get("ts"); ts != "" {
		if _, err := strconv.ParseInt(ts, 10, 64); err != nil {
			return nil, httpx.InvalidParam("ts must be an integer")
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, httpx.InvalidParam("url is not a URL")
	}
	u.Fragment, u.RawFragment = "", ""
	if err := s.preview.checkURL(u); err != nil {
		return nil, err
	}
	key := u.String()
	ctx := r.Context()
	var og string
	var fetched int64
	err = s.db.QueryRow(ctx, `SELECT og, fetched_ts FROM media_url_previews WHERE url = $1`, key).Scan(&og, &fetched)
	if err == nil && s.nowMS()-fetched < previewTTL.Milliseconds() {
		return json.RawMessage(og), nil
	}
	if err != nil && !errors.Is(err, db.ErrNoRows) {
		return nil, err
	}
	v, err, _ := s.flight.Do("preview "+key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return s.buildPreview(ctx, u)
	})
	if err != nil {
		return nil, err
	}
	return json.RawMessage(v.([]byte)), nil
}

// buildPreview fetches u, makes its preview and caches it.
func (s *Service) buildPreview(ctx context.Context, u *url.URL) ([]byte, error) {
	resp, err := s.preview.get(ctx, u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	og := map[string]any{}
	base, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case strings.HasPrefix(base, "image/"):
		if err := s.previewImage(ctx, resp, og); err != nil {
			return nil, err
		}
		if name := path.Base(resp.Request.URL.Path); name != "/" && name != "." {
			og["og:title"] = storableText(name, maxFilenameBytes)
		}
	case base == "text/html" || base == "application/xhtml+xml":
		props := parseHTML(io.LimitReader(resp.Body, s.preview.maxBytes), resp.Header.Get("Content-Type"))
		for k, v := range props {
			og[k] = v
		}
		if img, ok := props["og:image"]; ok {
			for k := range og {
				if strings.HasPrefix(k, "og:image") {
					delete(og, k)
				}
			}
			s.previewPageImage(ctx, resp.Request.URL, img, og)
		}
	}
	out, err := json.Marshal(og)
	if err != nil {
		return nil, err
	}
	_, err = s.db.Exec(ctx, `INSERT INTO media_url_previews (url, og, fetched_ts) VALUES ($1, $2, $3)
		ON CONFLICT (url) DO UPDATE SET og = excluded.og, fetched_ts = excluded.fetched_ts`, u.String(), string(out), s.nowMS())
	if err != nil {
		return nil, fmt.Errorf("media: caching a preview: %w", err)
	}
	return out, nil
}

// get fetches u; a refused address is 403 M_FORBIDDEN, any other failure
// 502 M_UNKNOWN.
func (p *previewer) get(ctx context.Context, u *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, httpx.InvalidParam("url is not a URL")
	}
	req.Header.Set("User-Agent", previewUserAgent)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5")
	resp, err := p.client.Do(req)
	if err != nil {
		var blocked *federation.BlockedAddressError
		var me *httpx.Error
		switch {
		case errors.As(err, &blocked):
			return nil, httpx.Forbidden("URL previews may not reach %s: it is not a public address", blocked.Addr)
		case errors.As(err, &me):
			return nil, me
		}
		return nil, httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch %s: %v", u.Redacted(), errors.Unwrap(err))
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "%s answered %d", u.Redacted(), resp.StatusCode)
	}
	return resp, nil
}

// previewImage stores the image resp carries as media and describes it in
// og. Content that is not an image Palpo can read adds nothing.
func (s *Service) previewImage(ctx context.Context, resp *http.Response, og map[string]any) error {
	limit := min(s.preview.maxBytes, s.cfg.MaxUploadBytes)
	st, err := s.stage(resp.Body, limit)
	if errors.Is(err, errTooLarge) {
		return httpx.NewError(http.StatusBadGateway, "M_TOO_LARGE", "The image is larger than %d bytes", limit)
	}
	if err != nil {
		if errors.Is(err, errStaging) {
			return err
		}
		return httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Could not read the image: %v", err)
	}
	if st.format == "" {
		s.store.Discard(st.f)
		return nil
	}
	ctype := "image/" + st.format
	c := st.content(ctype, "")
	id := newMediaID()
	if err := s.commitStaged(st, func() error { return s.putMedia(ctx, s.serverName, id, "", c, s.nowMS()) }); err != nil {
		return err
	}
	og["og:image"] = mxcURI(s.serverName, id)
	og["og:image:type"] = ctype
	og["og:image:width"] = c.Width
	og["og:image:height"] = c.Height
	og["matrix:image:size"] = c.Size
	return nil
}

// previewPageImage fetches a page's og:image (relative to the page) and
// adds it to og; an image that cannot be fetched is left out.
func (s *Service) previewPageImage(ctx context.Context, page *url.URL, ref string, og map[string]any) {
	u, err := page.Parse(ref)
	if err != nil || s.preview.checkURL(u) != nil {
		return
	}
	resp, err := s.preview.get(ctx, u)
	if err != nil {
		s.log.Debug("media: fetching the image of a preview", "url", u.Redacted(), "err", err)
		return
	}
	defer resp.Body.Close()
	if err := s.previewImage(ctx, resp, og); err != nil {
		s.log.Debug("media: storing the image of a preview", "url", u.Redacted(), "err", err)
	}
}

// parseHTML reads a page's OpenGraph properties (meta property="og:…"),
// falling back to <title> for og:title and meta name="description" for
// og:description. contentType gives the charset, if any.
func parseHTML(r io.Reader, contentType string) map[string]string {
	if cr, err := charset.NewReader(r, contentType); err == nil {
		r = cr
	}
	z := html.NewTokenizer(r)
	og := map[string]string{}
	var title, description string
	inTitle := false
	for {
		switch z.Next() {
		case html.ErrorToken:
			if og["og:title"] == "" && title != "" {
				og["og:title"] = title
			}
			if og["og:description"] == "" && description != "" {
				og["og:description"] = description
			}
			if d, ok := og["og:description"]; ok {
				og["og:description"] = truncateRunes(d, maxDescRunes)
			}
			return og
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "title":
				inTitle = title == ""
			case "meta":
				if !hasAttr {
					continue
				}
				attrs := map[string]string{}
				for {
					k, v, more := z.TagAttr()
					attrs[string(k)] = string(v)
					if !more {
						break
					}
				}
				key := strings.ToLower(attrs["property"])
				if key == "" {
					key = strings.ToLower(attrs["name"])
				}
				value := strings.TrimSpace(attrs["content"])
				switch {
				case key == "description" && description == "":
					description = value
				case strings.HasPrefix(key, "og:") && len(og) < maxOGProperties && og[key] == "" && value != "":
					og[key] = truncateRunes(value, maxOGValueRunes)
				}
			}
		case html.TextToken:
			if inTitle {
				title = truncateRunes(strings.Join(strings.Fields(string(z.Text())), " "), maxOGValueRunes)
			}
		case html.EndTagToken:
			inTitle = false
		}
	}
}

// truncateRunes cuts s to at most n characters (and valid UTF-8).
func truncateRunes(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}
