package media_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

// oldMediaServer serves media the way servers older than Matrix 1.11 do:
// only through the legacy client endpoints, with 404 and a body that is not
// JSON for the federation media endpoints. It is named "old" in network's
// CA and listens on the returned address.
func oldMediaServer(t *testing.T, network *testutil.Network) string {
	certFile, keyFile := network.CA.Issue(t, "old")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	thumb := pngBytes(t, 16, 16)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/media/v3/download/old/oldmedia", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Disposition", "attachment; filename=old.txt")
		_, _ = w.Write([]byte("from an old server"))
	})
	mux.HandleFunc("GET /_matrix/media/v3/thumbnail/old/oldmedia", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(thumb)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("404 page not found"))
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestFederatedMedia runs three servers federating over loopback TLS:
// users of hs1 download and thumbnail media uploaded on hs2, which hs1
// fetches with the federation media endpoints and caches; hs3 accepts
// smaller files than hs2 serves.
func TestFederatedMedia(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		network := testutil.NewNetwork(t, "hs1", "hs2", "hs3")
		old := oldMediaServer(t, network)
		hs1 := network.Start(t, b, "hs1", func(c *config.Config) { c.Federation.Resolve += ",old=" + old })
		hs2 := network.Start(t, b, "hs2")
		hs3 := network.Start(t, b, "hs3", func(c *config.Config) {
			c.Media.MaxUploadBytes = 1024
			c.Media.LegacyFreeze = "off"
		})
		alice := hs1.NewUser(t, "alice", "password")
		bob := hs2.NewUser(t, "bob", "password")
		img := pngBytes(t, 400, 200)
		id := upload(t, hs2, bob, img, "image/png", "remote picture.png")

		t.Run("thumbnail fetched from the origin", func(t *testing.T) {
			r := alice.Do("GET", mediaPath("thumbnail", "hs2", id)+"?width=96&height=96&method=crop", nil)
			decodeImage(t, "remote crop", r, "image/png", 96, 96)
			decodeImage(t, "remote scale", alice.Do("GET", mediaPath("thumbnail", "hs2", id)+"?width=100&height=100&method=scale", nil), "image/png", 100, 50)
		})
		t.Run("download fetched from the origin and cached", func(t *testing.T) {
			r := alice.Do("GET", mediaPath("download", "hs2", id), nil)
			requireStatus(t, "remote download", r, 200)
			if !bytes.Equal(r.Body, img) || r.Header.Get("Content-Type") != "image/png" ||
				r.Header.Get("Content-Disposition") != `inline; filename="remote picture.png"` || r.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("remote download: %d bytes, headers %v", len(r.Body), r.Header)
			}
			var cached int
			if err := hs1.DB.QueryRow(ctx, `SELECT COUNT(*) FROM media WHERE server_name = 'hs2' AND media_id = $1 AND sha256 <> ''`, id).Scan(&cached); err != nil || cached != 1 {
				t.Fatalf("hs1 did not cache the media (%d, %v)", cached, err)
			}
			// Cached whole, the media is thumbnailed on hs1 itself.
			decodeImage(t, "thumbnail of cached media", alice.Do("GET", mediaPath("thumbnail", "hs2", id)+"?width=50&height=50&method=crop", nil), "image/png", 50, 50)
			requireStatus(t, "second download", alice.Do("GET", mediaPath("download", "hs2", id)+"/x.png", nil), 200)
		})
		t.Run("federation endpoint answers multipart", func(t *testing.T) {
			resp, err := hs1.Federation.Client.DoRaw(ctx, "hs2", "GET", "/_matrix/federation/v1/media/download/"+id, nil, true)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
			if resp.StatusCode != 200 || err != nil || mt != "multipart/mixed" {
				t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			mr := multipart.NewReader(resp.Body, params["boundary"])
			meta, err := mr.NextPart()
			if err != nil || meta.Header.Get("Content-Type") != "application/json" || string(readAll(t, meta)) != "{}" {
				t.Fatalf("metadata part: %v %v", err, meta.Header)
			}
			part, err := mr.NextPart()
			if err != nil || part.Header.Get("Content-Type") != "image/png" || !bytes.Equal(readAll(t, part), img) {
				t.Fatalf("media part: %v %v", err, part.Header)
			}
			if _, err := mr.NextPart(); err != io.EOF {
				t.Fatalf("more than two parts: %v", err)
			}
			unsigned, err := hs1.Federation.Client.DoRaw(ctx, "hs2", "GET", "/_matrix/federation/v1/media/download/"+id, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			unsigned.Body.Close()
			if unsigned.StatusCode != http.StatusUnauthorized {
				t.Fatalf("unsigned request: %d", unsigned.StatusCode)
			}
		})
		t.Run("remote errors", func(t *testing.T) {
			requireError(t, "unknown remote media", alice.Do("GET", mediaPath("download", "hs2", "nosuchmedia"), nil), 404, "M_NOT_FOUND")
			requireError(t, "unknown remote thumbnail", alice.Do("GET", mediaPath("thumbnail", "hs2", "nosuchmedia")+"?width=32&height=32", nil), 404, "M_NOT_FOUND")
			textID := upload(t, hs2, bob, []byte("text"), "text/plain", "")
			requireError(t, "remote thumbnail of text", alice.Do("GET", mediaPath("thumbnail", "hs2", textID)+"?width=32&height=32", nil), 400, "M_UNKNOWN")
			big := upload(t, hs2, bob, bytes.Repeat([]byte("b"), 4096), "text/plain", "")
			requireError(t, "remote media over the limit", hs3.NewUser(t, "carol", "password").Do("GET", mediaPath("download", "hs2", big), nil), 502, "M_TOO_LARGE")
			requireError(t, "unreachable server", alice.Do("GET", mediaPath("download", "127.0.0.1:1", "abc"), nil), 502, "M_UNKNOWN")
			requireError(t, "legacy endpoint, frozen", hs1.Client(t).Do("GET", "/_matrix/media/v3/download/hs2/"+id, nil), 404, "M_NOT_FOUND")
		})
		t.Run("legacy requests", func(t *testing.T) {
			// hs3 serves the deprecated endpoints; it asks hs2's legacy
			// endpoint first, which is frozen, then the federation one.
			textID := upload(t, hs2, bob, []byte("small"), "text/plain", "small.txt")
			r := hs3.Client(t).Do("GET", "/_matrix/media/v3/download/hs2/"+textID, nil)
			if r.Status != 200 || string(r.Body) != "small" || r.Header.Get("Content-Disposition") != "inline; filename=small.txt" {
				t.Fatalf("legacy download of remote media: %d %q %v", r.Status, r.Body, r.Header)
			}
			decodeImage(t, "legacy remote thumbnail", hs3.Client(t).Do("GET", "/_matrix/media/v3/thumbnail/hs2/"+id+"?width=32&height=32&method=crop", nil), "image/png", 32, 32)
		})
		t.Run("server without the federation media endpoints", func(t *testing.T) {
			r := alice.Do("GET", mediaPath("download", "old", "oldmedia"), nil)
			if r.Status != 200 || string(r.Body) != "from an old server" || r.Header.Get("Content-Disposition") != "inline; filename=old.txt" {
				t.Fatalf("download from an old server: %d %q %v", r.Status, r.Body, r.Header)
			}
			decodeImage(t, "thumbnail from an old server", alice.Do("GET", mediaPath("thumbnail", "old", "oldmedia")+"?width=32&height=32", nil), "image/png", 16, 16)
		})
		t.Run("remote media not uploaded yet", func(t *testing.T) {
			r := bob.Do("POST", "/_matrix/media/v1/create", nil)
			requireStatus(t, "create", r, 200)
			pending := r.JSON["content_uri"].(string)[len("mxc://hs2/"):]
			requireError(t, "before the upload", alice.Do("GET", mediaPath("download", "hs2", pending)+"?timeout_ms=0", nil), 504, "M_NOT_YET_UPLOADED")
			put := bob.DoWithHeaders("PUT", "/_matrix/media/v3/upload/hs2/"+pending, "now here", map[string]string{"Content-Type": "text/plain"})
			requireStatus(t, "upload", put, 200)
			if r := alice.Do("GET", mediaPath("download", "hs2", pending), nil); r.Status != 200 || string(r.Body) != "now here" {
				t.Fatalf("after the upload: %d %q", r.Status, r.Body)
			}
		})
		t.Run("purge and quarantine of remote media", func(t *testing.T) {
			root := admin(t, hs1)
			r := root.Do("POST", fmt.Sprintf("/_synapse/admin/v1/purge_media_cache?before_ts=%d", time.Now().Add(time.Hour).UnixMilli()), nil)
			if r.Status != 200 || r.JSON["deleted"].(float64) < 1 {
				t.Fatalf("purge: %d %s", r.Status, r.Body)
			}
			var left int
			if err := hs1.DB.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM media WHERE server_name = 'hs2') + (SELECT COUNT(*) FROM media_thumbnails WHERE server_name = 'hs2')`).Scan(&left); err != nil || left != 0 {
				t.Fatalf("remote media left after the purge: %d (%v)", left, err)
			}
			// Fetched again on demand.
			if r := alice.Do("GET", mediaPath("download", "hs2", id), nil); r.Status != 200 || !bytes.Equal(r.Body, img) {
				t.Fatalf("download after the purge: %d", r.Status)
			}
			requireStatus(t, "quarantine", root.Do("POST", "/_synapse/admin/v1/media/quarantine/hs2/"+id, nil), 200)
			requireError(t, "quarantined remote media", alice.Do("GET", mediaPath("download", "hs2", id), nil), 404, "M_NOT_FOUND")
			// Remote media can be quarantined before it was ever fetched.
			other := upload(t, hs2, bob, []byte("never fetched"), "text/plain", "")
			requireStatus(t, "quarantine ahead", root.Do("POST", "/_synapse/admin/v1/media/quarantine/hs2/"+other, nil), 200)
			requireError(t, "quarantined ahead", alice.Do("GET", mediaPath("download", "hs2", other), nil), 404, "M_NOT_FOUND")
			requireError(t, "quarantined ahead, thumbnail", alice.Do("GET", mediaPath("thumbnail", "hs2", other)+"?width=32&height=32", nil), 404, "M_NOT_FOUND")
			r = root.Do("POST", fmt.Sprintf("/_synapse/admin/v1/purge_media_cache?before_ts=%d", time.Now().Add(time.Hour).UnixMilli()), nil)
			requireStatus(t, "purge keeps quarantined media", r, 200)
			requireError(t, "still quarantined after a purge", alice.Do("GET", mediaPath("download", "hs2", other), nil), 404, "M_NOT_FOUND")
		})
	})
}
