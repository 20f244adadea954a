package media_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

// contentFiles counts the files of the content storage of srv.
func contentFiles(t *testing.T, srv *testutil.Server) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(srv.Config.DataDir, "media", "content"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// guest returns a client of a new guest account of srv.
func guest(t *testing.T, srv *testutil.Server) *testutil.Client {
	t.Helper()
	ctx := context.Background()
	g, err := srv.Accounts.CreateUser(ctx, "mediaguest", "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.Accounts.NewSession(ctx, g.UserID, "", "guest", "127.0.0.1", "test", false)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	c.UserID, c.AccessToken = g.UserID, sess.AccessToken
	return c
}

func TestUploadAndDownload(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "password")
		server := srv.Config.ServerName
		text := []byte("hello, media")
		id := upload(t, srv, alice, text, "text/plain", "War and Peace.txt")

		t.Run("download with the uploaded name and safety headers", func(t *testing.T) {
			r := alice.Do("GET", mediaPath("download", server, id), nil)
			requireStatus(t, "download", r, 200)
			if !bytes.Equal(r.Body, text) {
				t.Fatalf("body %q", r.Body)
			}
			want := map[string]string{
				"Content-Type":                 "text/plain",
				"Content-Disposition":          `inline; filename="War and Peace.txt"`,
				"X-Content-Type-Options":       "nosniff",
				"Cross-Origin-Resource-Policy": "cross-origin",
			}
			for k, v := range want {
				if got := r.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if csp := r.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "sandbox;") || !strings.Contains(csp, "script-src 'none'") {
				t.Errorf("Content-Security-Policy %q", csp)
			}
		})
		t.Run("file name in the path overrides", func(t *testing.T) {
			r := alice.Do("GET", mediaPath("download", server, id)+"/other.txt", nil)
			requireStatus(t, "download", r, 200)
			if cd := r.Header.Get("Content-Disposition"); cd != "inline; filename=other.txt" {
				t.Fatalf("Content-Disposition %q", cd)
			}
		})
		t.Run("unicode file name", func(t *testing.T) {
			uid := upload(t, srv, alice, []byte("x"), "text/plain", "Ünïcödé ☃.txt")
			r := alice.Do("GET", mediaPath("download", server, uid), nil)
			if cd := r.Header.Get("Content-Disposition"); cd != "inline; filename*=utf-8''%C3%9Cn%C3%AFc%C3%B6d%C3%A9%20%E2%98%83.txt" {
				t.Fatalf("Content-Disposition %q", cd)
			}
		})
		t.Run("no file name, no content type", func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL+"/_matrix/media/v3/upload", bytes.NewReader([]byte{1, 2, 3}))
			req.Header.Set("Authorization", "Bearer "+alice.AccessToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var up struct {
				ContentURI string `json:"content_uri"`
			}
			err = json.NewDecoder(resp.Body).Decode(&up)
			resp.Body.Close()
			if resp.StatusCode != 200 || err != nil {
				t.Fatalf("upload without Content-Type: %d %v", resp.StatusCode, err)
			}
			r := alice.Do("GET", "/_matrix/client/v1/media/download/"+strings.TrimPrefix(up.ContentURI, "mxc://"), nil)
			if ct, cd := r.Header.Get("Content-Type"), r.Header.Get("Content-Disposition"); ct != "application/octet-stream" || cd != "attachment" {
				t.Fatalf("Content-Type %q, Content-Disposition %q", ct, cd)
			}
		})
		t.Run("script-capable types are never served as such", func(t *testing.T) {
			for _, ct := range []string{"text/html", "text/html; charset=utf-8", "image/svg+xml", "application/javascript", "text/xml", "application/xhtml+xml"} {
				hid := upload(t, srv, alice, []byte("<script>alert(1)</script>"), ct, "x.html")
				r := alice.Do("GET", mediaPath("download", server, hid), nil)
				if got, cd := r.Header.Get("Content-Type"), r.Header.Get("Content-Disposition"); got != "application/octet-stream" || cd != `attachment; filename=x.html` {
					t.Errorf("%s served as %q, %q", ct, got, cd)
				}
			}
		})
		t.Run("range requests", func(t *testing.T) {
			r := alice.DoWithHeaders("GET", mediaPath("download", server, id), nil, map[string]string{"Range": "bytes=0-4"})
			if r.Status != http.StatusPartialContent || string(r.Body) != "hello" {
				t.Fatalf("%d %q", r.Status, r.Body)
			}
		})
		t.Run("same bytes stored once", func(t *testing.T) {
			before := contentFiles(t, srv)
			data := []byte("deduplicated content")
			id1 := upload(t, srv, alice, data, "text/plain", "a.txt")
			id2 := upload(t, srv, alice, data, "application/octet-stream", "b.bin")
			if id1 == id2 {
				t.Fatal("two uploads got the same media ID")
			}
			if after := contentFiles(t, srv); after != before+1 {
				t.Fatalf("%d content files after two identical uploads, want %d", after, before+1)
			}
			r := alice.Do("GET", mediaPath("download", server, id2), nil)
			if string(r.Body) != string(data) || r.Header.Get("Content-Disposition") != "attachment; filename=b.bin" {
				t.Fatalf("second copy: %q %v", r.Body, r.Header)
			}
		})
		t.Run("errors", func(t *testing.T) {
			anon := srv.Client(t)
			requireError(t, "download without a token", anon.Do("GET", mediaPath("download", server, id), nil), 401, "M_MISSING_TOKEN")
			requireError(t, "upload without a token", anon.Do("POST", "/_matrix/media/v3/upload", "x"), 401, "M_MISSING_TOKEN")
			requireError(t, "unknown media", alice.Do("GET", mediaPath("download", server, "nosuchmedia"), nil), 404, "M_NOT_FOUND")
			requireError(t, "media ID with a dot", alice.Do("GET", mediaPath("download", server, "a.b"), nil), 400, "M_INVALID_PARAM")
			requireError(t, "bad server name", alice.Do("GET", "/_matrix/client/v1/media/download/bad%20server/abc", nil), 400, "M_INVALID_PARAM")
			requireError(t, "bad timeout_ms", alice.Do("GET", mediaPath("download", server, id)+"?timeout_ms=soon", nil), 400, "M_INVALID_PARAM")
			requireError(t, "NUL in the file name", alice.Do("POST", "/_matrix/media/v3/upload?filename=a%00b", "x"), 400, "M_INVALID_PARAM")
			long := strings.Repeat("n", 1025)
			requireError(t, "long file name", alice.Do("POST", "/_matrix/media/v3/upload?filename="+long, "x"), 400, "M_INVALID_PARAM")
			g := guest(t, srv)
			requireError(t, "guest upload", g.Do("POST", "/_matrix/media/v3/upload", "x"), 403, "M_GUEST_ACCESS_FORBIDDEN")
			requireStatus(t, "guest download", g.Do("GET", mediaPath("download", server, id), nil), 200)
		})
	})
}

func TestUploadLimit(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.Media.MaxUploadBytes = 4096 })
		alice := srv.NewUser(t, "alice", "password")
		for _, path := range []string{"/_matrix/client/v1/media/config", "/_matrix/media/v3/config"} {
			r := alice.Do("GET", path, nil)
			if r.Status != 200 || r.JSON["m.upload.size"] != float64(4096) {
				t.Fatalf("%s: %d %s", path, r.Status, r.Body)
			}
		}
		requireError(t, "config without a token", srv.Client(t).Do("GET", "/_matrix/client/v1/media/config", nil), 401, "M_MISSING_TOKEN")
		upload(t, srv, alice, bytes.Repeat([]byte("a"), 4096), "text/plain", "")
		requireError(t, "too large", alice.Do("POST", "/_matrix/media/v3/upload", bytes.Repeat([]byte("a"), 4097)), 413, "M_TOO_LARGE")

		// Without a Content-Length the server finds out while reading.
		req, _ := http.NewRequest("POST", srv.URL+"/_matrix/media/v3/upload", struct{ *bytes.Reader }{bytes.NewReader(bytes.Repeat([]byte("a"), 10000))})
		req.Header.Set("Authorization", "Bearer "+alice.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || !strings.Contains(string(body), "M_TOO_LARGE") {
			t.Fatalf("chunked upload too large: %d %s", resp.StatusCode, body)
		}
		if n := contentFiles(t, srv); n != 1 {
			t.Fatalf("%d content files, want 1: refused uploads must leave nothing", n)
		}
	})
}

func TestAsyncUpload(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.Media.MaxPendingUploads = 3 })
		alice := srv.NewUser(t, "alice", "password")
		bob := srv.NewUser(t, "bob", "password")
		server := srv.Config.ServerName
		create := func(c *testutil.Client) string {
			t.Helper()
			r := c.Do("POST", "/_matrix/media/v1/create", nil)
			requireStatus(t, "create", r, 200)
			uri, _ := r.JSON["content_uri"].(string)
			exp, _ := r.JSON["unused_expires_at"].(float64)
			if until := time.UnixMilli(int64(exp)); until.Before(time.Now().Add(23*time.Hour)) || until.After(time.Now().Add(25*time.Hour)) {
				t.Fatalf("unused_expires_at %v is not a day ahead", until)
			}
			return strings.TrimPrefix(uri, "mxc://"+server+"/")
		}
		put := func(c *testutil.Client, id string, body string) *testutil.Response {
			return c.DoWithHeaders("PUT", "/_matrix/media/v3/upload/"+server+"/"+id+"?filename=late.txt", body, map[string]string{"Content-Type": "text/plain"})
		}

		id := create(alice)
		requireError(t, "download before the upload", alice.Do("GET", mediaPath("download", server, id)+"?timeout_ms=0", nil), 504, "M_NOT_YET_UPLOADED")
		requireError(t, "thumbnail before the upload", alice.Do("GET", mediaPath("thumbnail", server, id)+"?width=32&height=32&timeout_ms=10", nil), 504, "M_NOT_YET_UPLOADED")

		// A download waiting for the content gets it when it arrives.
		var wg sync.WaitGroup
		var waited *testutil.Response
		wg.Add(1)
		go func() {
			defer wg.Done()
			waited = alice.Do("GET", mediaPath("download", server, id)+"?timeout_ms=20000", nil)
		}()
		time.Sleep(200 * time.Millisecond)
		requireError(t, "upload by another user", put(bob, id, "bob's"), 403, "M_FORBIDDEN")
		requireStatus(t, "upload", put(alice, id, "arrived late"), 200)
		wg.Wait()
		if waited.Status != 200 || string(waited.Body) != "arrived late" || waited.Header.Get("Content-Disposition") != "inline; filename=late.txt" {
			t.Fatalf("waiting download: %d %q %v", waited.Status, waited.Body, waited.Header)
		}
		requireError(t, "second upload", put(alice, id, "again"), 409, "M_CANNOT_OVERWRITE_MEDIA")
		requireError(t, "unknown ID", put(alice, "neverCreated", "x"), 404, "M_NOT_FOUND")
		requireError(t, "ID of another server", alice.DoWithHeaders("PUT", "/_matrix/media/v3/upload/other.example/"+id, "x", nil), 404, "M_NOT_FOUND")
		requireError(t, "malformed ID", put(alice, "a.b", "x"), 400, "M_INVALID_PARAM")
		requireError(t, "create as a guest", guest(t, srv).Do("POST", "/_matrix/media/v1/create", nil), 403, "M_GUEST_ACCESS_FORBIDDEN")

		// Pending uploads are limited per user.
		pending := []string{create(alice), create(alice), create(alice)}
		limited := alice.Do("POST", "/_matrix/media/v1/create", nil)
		requireError(t, "too many pending", limited, 429, "M_LIMIT_EXCEEDED")
		if wait, _ := limited.JSON["retry_after_ms"].(float64); wait < float64(23*time.Hour/time.Millisecond) {
			t.Fatalf("retry_after_ms %v: the first pending ID expires in a day", limited.JSON["retry_after_ms"])
		}
		create(bob) // other users are not affected

		// An ID that expired unused can be neither uploaded nor downloaded,
		// and housekeeping removes it.
		if _, err := srv.DB.Exec(context.Background(), `UPDATE media SET expires_ts = 1 WHERE media_id = $1`, pending[0]); err != nil {
			t.Fatal(err)
		}
		requireError(t, "upload to an expired ID", put(alice, pending[0], "x"), 404, "M_NOT_FOUND")
		requireError(t, "download of an expired ID", alice.Do("GET", mediaPath("download", server, pending[0]), nil), 404, "M_NOT_FOUND")
		create(alice) // the expired one no longer counts
		srv.Media.Housekeep(context.Background())
		var n int
		if err := srv.DB.QueryRow(context.Background(), `SELECT COUNT(*) FROM media WHERE media_id = $1`, pending[0]).Scan(&n); err != nil || n != 0 {
			t.Fatalf("expired ID still stored (%d, %v)", n, err)
		}
	})
}
