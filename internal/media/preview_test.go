package media_test

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

// previewSite is a web site on loopback for preview tests.
type previewSite struct {
	*httptest.Server
	pageHits atomic.Int64
	img      []byte
}

func newPreviewSite(t *testing.T) *previewSite {
	s := &previewSite{img: pngBytes(t, 120, 60)}
	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, r *http.Request) {
		s.pageHits.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(`<!doctype html><html><head><title>Ignored title</title>
<meta property="og:title" content="Matrix Blog Post">
<meta property="og:description" content="This is a really cool blog post">
<meta property="og:image" content="/img.png">
<meta property="og:image:width" content="9999">
<meta property="og:type" content="article">
</head><body>hi</body></html>`))
	})
	mux.HandleFunc("/plain", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=iso-8859-1")
		_, _ = w.Write([]byte("<html><head><title>  Caf\xe9\n menu </title><meta name=\"description\" content=\"Coffee &amp; cake\"></head></html>"))
	})
	mux.HandleFunc("/img.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(s.img)
	})
	mux.HandleFunc("/file.bin", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write([]byte{1, 2, 3})
	})
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/to-private", func(w http.ResponseWriter, r *http.Request) {
		_, port, _ := net.SplitHostPort(r.Host)
		http.Redirect(w, r, "http://127.0.0.2:"+port+"/page", http.StatusFound)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// preview asks c for a preview of u.
func preview(c *testutil.Client, u string) *testutil.Response {
	return c.Do("GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(u), nil)
}

func TestURLPreviewsOffByDefault(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "password")
		site := newPreviewSite(t)
		requireError(t, "previews off", preview(alice, site.URL+"/page"), 403, "M_FORBIDDEN")
		requireError(t, "no token", preview(srv.Client(t), site.URL+"/page"), 401, "M_MISSING_TOKEN")
		if site.pageHits.Load() != 0 {
			t.Fatal("the page was fetched")
		}
	})
}

// TestURLPreviewLoopbackRefused turns previews on without allowing any
// private range: a URL on 127.0.0.1 is refused at connection time.
func TestURLPreviewLoopbackRefused(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.Media.URLPreviews = true })
		alice := srv.NewUser(t, "alice", "password")
		site := newPreviewSite(t)
		r := preview(alice, site.URL+"/page")
		requireError(t, "preview of 127.0.0.1", r, 403, "M_FORBIDDEN")
		if !strings.Contains(r.JSON["error"].(string), "not a public address") {
			t.Fatalf("error %q does not say why", r.JSON["error"])
		}
		requireError(t, "preview of localhost", preview(alice, "http://localhost:"+site.URL[strings.LastIndex(site.URL, ":")+1:]+"/page"), 403, "M_FORBIDDEN")
		if site.pageHits.Load() != 0 {
			t.Fatal("the page was fetched")
		}
	})
}

func TestURLPreview(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) {
			c.Media.URLPreviews = true
			c.Media.PreviewAllowRanges = "127.0.0.1"
			c.Media.PreviewDenyHosts = "denied.example"
		})
		alice := srv.NewUser(t, "alice", "password")
		site := newPreviewSite(t)

		t.Run("OpenGraph with an image", func(t *testing.T) {
			r := preview(alice, site.URL+"/page#fragment")
			requireStatus(t, "preview", r, 200)
			og := r.JSON
			if og["og:title"] != "Matrix Blog Post" || og["og:description"] != "This is a really cool blog post" || og["og:type"] != "article" {
				t.Fatalf("preview %s", r.Body)
			}
			if og["og:image:width"] != float64(120) || og["og:image:height"] != float64(60) || og["og:image:type"] != "image/png" ||
				og["matrix:image:size"] != float64(len(site.img)) {
				t.Fatalf("image properties %s", r.Body)
			}
			mxc, _ := og["og:image"].(string)
			img := alice.Do("GET", "/_matrix/client/v1/media/download/"+strings.TrimPrefix(mxc, "mxc://"), nil)
			if img.Status != 200 || !bytes.Equal(img.Body, site.img) {
				t.Fatalf("og:image %q: %d", mxc, img.Status)
			}
			// Cached: the page is not fetched again (the fragment does not matter).
			hits := site.pageHits.Load()
			requireStatus(t, "again", preview(alice, site.URL+"/page"), 200)
			requireStatus(t, "deprecated path", alice.Do("GET", "/_matrix/media/v3/preview_url?url="+url.QueryEscape(site.URL+"/page")+"&ts=1510610716656", nil), 200)
			if site.pageHits.Load() != hits {
				t.Fatal("a cached preview was fetched again")
			}
		})
		t.Run("HTML title and description", func(t *testing.T) {
			r := preview(alice, site.URL+"/plain")
			if r.Status != 200 || r.JSON["og:title"] != "Café menu" || r.JSON["og:description"] != "Coffee & cake" {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
		})
		t.Run("an image URL", func(t *testing.T) {
			r := preview(alice, site.URL+"/img.png")
			if r.Status != 200 || r.JSON["og:image:width"] != float64(120) || !strings.HasPrefix(r.JSON["og:image"].(string), "mxc://") {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
		})
		t.Run("other content has an empty preview", func(t *testing.T) {
			r := preview(alice, site.URL+"/file.bin")
			if r.Status != 200 || len(r.JSON) != 0 {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
		})
		t.Run("errors", func(t *testing.T) {
			requireError(t, "no url", alice.Do("GET", "/_matrix/client/v1/media/preview_url", nil), 400, "M_MISSING_PARAM")
			requireError(t, "not http", preview(alice, "ftp://127.0.0.1/x"), 400, "M_INVALID_PARAM")
			requireError(t, "URL too long", preview(alice, site.URL+"/page?"+strings.Repeat("q", 2100)), 400, "M_INVALID_PARAM")
			requireError(t, "no host", preview(alice, "http:///x"), 400, "M_INVALID_PARAM")
			requireError(t, "bad ts", alice.Do("GET", "/_matrix/client/v1/media/preview_url?url=http://a.example/&ts=now", nil), 400, "M_INVALID_PARAM")
			requireError(t, "denied host", preview(alice, "http://www.denied.example/"), 403, "M_FORBIDDEN")
			requireError(t, "page not found", preview(alice, site.URL+"/missing"), 502, "M_UNKNOWN")
			requireError(t, "redirect to a private address", preview(alice, site.URL+"/to-private"), 403, "M_FORBIDDEN")
			requireError(t, "guest", guest(t, srv).Do("GET", "/_matrix/client/v1/media/preview_url?url=http://a.example/", nil), 403, "M_GUEST_ACCESS_FORBIDDEN")
		})
	})
}
