package server_test

import (
	"net/http"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

func TestDiscoveryEndpoints(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		c := srv.Client(t)

		r := c.MustDo(http.StatusOK, "GET", "/_matrix/client/versions", nil)
		if vs, _ := r.JSON["versions"].([]any); len(vs) == 0 {
			t.Fatalf("versions missing: %s", r.Body)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if r.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("no CORS header")
		}
		r = c.MustDo(http.StatusOK, "GET", "/.well-known/matrix/client", nil)
		hs, _ := r.JSON["m.homeserver"].(map[string]any)
		if hs["base_url"] == "" || hs["base_url"] == nil {
			t.Errorf("well-known client: %s", r.Body)
		}
		if r := c.Do("GET", "/.well-known/matrix/server", nil); r.Status != 404 || r.ErrCode() != "M_NOT_FOUND" {
			t.Errorf("well-known server without delegation: %d %s", r.Status, r.Body)
		}
		if r := c.Do("GET", "/health", nil); r.Status != 200 || string(r.Body) != "OK" {
			t.Errorf("health: %d %s", r.Status, r.Body)
		}
		if r := c.Do("GET", "/_matrix/client/v3/capabilities", nil); r.Status != 401 || r.ErrCode() != "M_MISSING_TOKEN" {
			t.Errorf("capabilities without token: %d %s", r.Status, r.Body)
		}
		if r := c.Do("GET", "/_matrix/client/v3/no/such/endpoint", nil); r.Status != 404 || r.ErrCode() != "M_UNRECOGNIZED" {
			t.Errorf("unknown endpoint: %d %s", r.Status, r.Body)
		}
		if r := c.Do("DELETE", "/_matrix/client/versions", nil); r.Status != 405 || r.ErrCode() != "M_UNRECOGNIZED" {
			t.Errorf("wrong method: %d %s", r.Status, r.Body)
		}
		if r := c.Do("OPTIONS", "/_matrix/client/v3/login", nil); r.Status != 200 || r.Header.Get("Access-Control-Allow-Methods") == "" {
			t.Errorf("OPTIONS pre-flight: %d %v", r.Status, r.Header)
		}
		u := srv.NewUser(t, "alice", "secret")
		r = u.MustDo(http.StatusOK, "GET", "/_matrix/client/v3/capabilities", nil)
		if _, ok := r.JSON["capabilities"].(map[string]any)["m.change_password"]; !ok {
			t.Errorf("capabilities: %s", r.Body)
		}
		rv, _ := r.JSON["capabilities"].(map[string]any)["m.room_versions"].(map[string]any)
		if rv["default"] != "12" || rv["available"].(map[string]any)["1"] != "stable" {
			t.Errorf("m.room_versions: %v", rv)
		}
		// r0 paths are served by the v3 routes.
		u.MustDo(http.StatusOK, "GET", "/_matrix/client/r0/capabilities", nil)
	})
}
