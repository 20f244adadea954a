package media_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

// TestLegacyFreeze checks the deprecated unauthenticated endpoints under
// each media.legacy_freeze setting.
func TestLegacyFreeze(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		for _, c := range []struct {
			freeze string
			served bool
		}{
			{"on", false},
			{"off", true},
			{"2020-01-01", false}, // media stored after the date
			{time.Now().Add(time.Hour).Format(time.RFC3339), true}, // before it
		} {
			t.Run(c.freeze, func(t *testing.T) {
				srv := testutil.Start(t, b, func(cfg *config.Config) { cfg.Media.LegacyFreeze = c.freeze })
				alice := srv.NewUser(t, "alice", "password")
				img := pngBytes(t, 64, 64)
				id := upload(t, srv, alice, img, "image/png", "pic.png")
				anon := srv.Client(t)
				base := "/_matrix/media/v3/%s/" + srv.Config.ServerName + "/" + id
				download := anon.Do("GET", fmt.Sprintf(base, "download"), nil)
				named := anon.Do("GET", fmt.Sprintf(base, "download")+"/named.png", nil)
				thumb := anon.Do("GET", fmt.Sprintf(base, "thumbnail")+"?width=32&height=32&method=crop", nil)
				if !c.served {
					for _, r := range []*testutil.Response{download, named, thumb} {
						requireError(t, "frozen media", r, 404, "M_NOT_FOUND")
					}
				} else {
					if download.Status != 200 || !bytes.Equal(download.Body, img) || download.Header.Get("Content-Security-Policy") == "" {
						t.Fatalf("legacy download: %d %v", download.Status, download.Header)
					}
					if named.Header.Get("Content-Disposition") != "inline; filename=named.png" {
						t.Fatalf("legacy download with a name: %v", named.Header)
					}
					decodeImage(t, "legacy thumbnail", thumb, "image/png", 32, 32)
				}
				// The authenticated endpoints serve it whatever the setting.
				requireStatus(t, "authenticated download", alice.Do("GET", mediaPath("download", srv.Config.ServerName, id), nil), 200)
				// Remote media: never fetched for a legacy request with
				// allow_remote=false, and bad parameters are refused.
				requireError(t, "allow_remote=false", anon.Do("GET", "/_matrix/media/v3/download/remote.example/abc?allow_remote=false", nil), 404, "M_NOT_FOUND")
				requireError(t, "bad allow_remote", anon.Do("GET", "/_matrix/media/v3/download/remote.example/abc?allow_remote=perhaps", nil), 400, "M_INVALID_PARAM")
				requireError(t, "unknown media", anon.Do("GET", fmt.Sprintf("/_matrix/media/v3/download/%s/nosuch", srv.Config.ServerName), nil), 404, "M_NOT_FOUND")
			})
		}
	})
}

// admin returns a client of a new server admin of srv.
func admin(t *testing.T, srv *testutil.Server) *testutil.Client {
	t.Helper()
	ctx := context.Background()
	u, err := srv.Accounts.CreateUser(ctx, "mediaadmin", "password", true, false)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.Accounts.NewSession(ctx, u.UserID, "", "admin", "127.0.0.1", "test", false)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	c.UserID, c.AccessToken = u.UserID, sess.AccessToken
	return c
}

func TestAdminAPI(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "password")
		root := admin(t, srv)
		server := srv.Config.ServerName
		adminPath := func(op, id string) string { return "/_synapse/admin/v1/media/" + op + server + "/" + id }

		shared := []byte("shared bytes")
		id1 := upload(t, srv, alice, shared, "text/plain", "")
		id2 := upload(t, srv, alice, shared, "text/plain", "")
		imgID := upload(t, srv, alice, pngBytes(t, 300, 300), "image/png", "")

		t.Run("only admins", func(t *testing.T) {
			requireError(t, "delete by a user", alice.Do("DELETE", adminPath("", id1), nil), 403, "M_FORBIDDEN")
			requireError(t, "quarantine by a user", alice.Do("POST", adminPath("quarantine/", id1), nil), 403, "M_FORBIDDEN")
			requireError(t, "purge by a user", alice.Do("POST", "/_synapse/admin/v1/purge_media_cache?before_ts=1", nil), 403, "M_FORBIDDEN")
			requireError(t, "delete old by a user", alice.Do("POST", "/_synapse/admin/v1/media/delete?before_ts=1", nil), 403, "M_FORBIDDEN")
		})
		t.Run("quarantine", func(t *testing.T) {
			requireStatus(t, "quarantine", root.Do("POST", adminPath("quarantine/", imgID), nil), 200)
			requireError(t, "download of quarantined media", alice.Do("GET", mediaPath("download", server, imgID), nil), 404, "M_NOT_FOUND")
			requireError(t, "thumbnail of quarantined media", alice.Do("GET", mediaPath("thumbnail", server, imgID)+"?width=32&height=32", nil), 404, "M_NOT_FOUND")
			requireStatus(t, "unquarantine", root.Do("POST", adminPath("unquarantine/", imgID), nil), 200)
			requireStatus(t, "download after release", alice.Do("GET", mediaPath("download", server, imgID), nil), 200)
			requireError(t, "quarantine of unknown media", root.Do("POST", adminPath("quarantine/", "nosuch"), nil), 404, "M_NOT_FOUND")
			requireError(t, "quarantine with a bad ID", root.Do("POST", adminPath("quarantine/", "a.b"), nil), 400, "M_INVALID_PARAM")
			requireError(t, "quarantine with a body that is not JSON", root.Do("POST", adminPath("quarantine/", imgID), "nope"), 400, "M_NOT_JSON")
		})
		t.Run("delete keeps shared content", func(t *testing.T) {
			files := contentFiles(t, srv)
			r := root.Do("DELETE", adminPath("", id1), nil)
			if r.Status != 200 || r.JSON["total"] != float64(1) {
				t.Fatalf("delete: %d %s", r.Status, r.Body)
			}
			requireError(t, "deleted media", alice.Do("GET", mediaPath("download", server, id1), nil), 404, "M_NOT_FOUND")
			if got := alice.Do("GET", mediaPath("download", server, id2), nil); got.Status != 200 || !bytes.Equal(got.Body, shared) {
				t.Fatalf("the other copy of the same bytes: %d", got.Status)
			}
			if contentFiles(t, srv) != files {
				t.Fatal("content still used by other media was removed")
			}
			requireStatus(t, "delete the last copy", root.Do("DELETE", adminPath("", id2), nil), 200)
			if contentFiles(t, srv) != files-1 {
				t.Fatal("content of the last copy was not removed")
			}
			requireError(t, "delete again", root.Do("DELETE", adminPath("", id2), nil), 404, "M_NOT_FOUND")
		})
		t.Run("delete with thumbnails", func(t *testing.T) {
			files := contentFiles(t, srv)
			if thumbCount(t, srv, imgID) == 0 {
				t.Fatal("no thumbnails to delete")
			}
			requireStatus(t, "delete", root.Do("DELETE", adminPath("", imgID), nil), 200)
			if thumbCount(t, srv, imgID) != 0 || contentFiles(t, srv) >= files-1 {
				t.Fatalf("thumbnails left: %d rows, %d of %d files", thumbCount(t, srv, imgID), contentFiles(t, srv), files)
			}
		})
		t.Run("purge and delete by date", func(t *testing.T) {
			requireError(t, "purge without before_ts", root.Do("POST", "/_synapse/admin/v1/purge_media_cache", nil), 400, "M_MISSING_PARAM")
			requireError(t, "purge with a bad before_ts", root.Do("POST", "/_synapse/admin/v1/purge_media_cache?before_ts=yesterday", nil), 400, "M_INVALID_PARAM")
			r := root.Do("POST", fmt.Sprintf("/_synapse/admin/v1/purge_media_cache?before_ts=%d", time.Now().Add(time.Hour).UnixMilli()), nil)
			if r.Status != 200 || r.JSON["deleted"] != float64(0) {
				t.Fatalf("purge with no remote media: %d %s", r.Status, r.Body)
			}
			old := upload(t, srv, alice, []byte("old"), "text/plain", "")
			r = root.Do("POST", "/_synapse/admin/v1/media/delete?before_ts=1", nil)
			if r.Status != 200 || r.JSON["total"] != float64(0) {
				t.Fatalf("delete before 1970: %d %s", r.Status, r.Body)
			}
			r = root.Do("POST", fmt.Sprintf("/_synapse/admin/v1/media/delete?before_ts=%d", time.Now().Add(time.Hour).UnixMilli()), nil)
			if r.Status != 200 || r.JSON["total"] != float64(1) {
				t.Fatalf("delete before now: %d %s", r.Status, r.Body)
			}
			requireError(t, "deleted by date", alice.Do("GET", mediaPath("download", server, old), nil), http.StatusNotFound, "M_NOT_FOUND")
		})
	})
}

// TestRetention ages media by hand (as if nobody had downloaded it for a
// long time) and runs the housekeeping with media.local_retention set.
func TestRetention(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.Media.LocalRetention = 30 * 24 * time.Hour })
		alice := srv.NewUser(t, "alice", "password")
		server := srv.Config.ServerName
		stale := upload(t, srv, alice, []byte("stale"), "text/plain", "")
		fresh := upload(t, srv, alice, []byte("fresh"), "text/plain", "")
		old := time.Now().Add(-31 * 24 * time.Hour).UnixMilli()
		if _, err := srv.DB.Exec(context.Background(), `UPDATE media SET last_access_ts = $1 WHERE media_id = $2`, old, stale); err != nil {
			t.Fatal(err)
		}
		srv.Media.Housekeep(context.Background())
		requireError(t, "media past retention", alice.Do("GET", mediaPath("download", server, stale), nil), 404, "M_NOT_FOUND")
		requireStatus(t, "recently downloaded media", alice.Do("GET", mediaPath("download", server, fresh), nil), 200)
	})
}

// TestNoPregeneratedThumbnails empties media.thumbnail_sizes: nothing is
// made at upload, and thumbnails are still made on request.
func TestNoPregeneratedThumbnails(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.Media.ThumbnailSizes = "" })
		alice := srv.NewUser(t, "alice", "password")
		id := upload(t, srv, alice, pngBytes(t, 200, 200), "image/png", "")
		if n := thumbCount(t, srv, id); n != 0 {
			t.Fatalf("%d thumbnails made at upload", n)
		}
		decodeImage(t, "on request", alice.Do("GET", mediaPath("thumbnail", srv.Config.ServerName, id)+"?width=40&height=40&method=crop", nil), "image/png", 40, 40)
		if n := thumbCount(t, srv, id); n != 1 {
			t.Fatalf("%d thumbnails cached, want 1", n)
		}
	})
}
