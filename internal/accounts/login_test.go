package accounts_test

import (
	"context"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

const (
	loginPath   = "/_matrix/client/v3/login"
	refreshPath = "/_matrix/client/v3/refresh"
	whoamiPath  = "/_matrix/client/v3/account/whoami"
	devicesPath = "/_matrix/client/v3/devices"
)

// userIDLogin is an m.login.password body with an m.id.user identifier.
func userIDLogin(user, password string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": user},
		"password":   password,
	}
}

// logIn posts body to /login, expects 200 and returns a client on the new
// session with the response.
func logIn(t *testing.T, srv *testutil.Server, body map[string]any) (*testutil.Client, *testutil.Response) {
	t.Helper()
	r := srv.Client(t).MustDo(200, "POST", loginPath, body)
	c := srv.Client(t)
	c.UserID, _ = r.JSON["user_id"].(string)
	c.DeviceID, _ = r.JSON["device_id"].(string)
	c.AccessToken, _ = r.JSON["access_token"].(string)
	if c.UserID == "" || c.DeviceID == "" || c.AccessToken == "" {
		t.Fatalf("login response lacks user_id, device_id or access_token: %s", r.Body)
	}
	return c, r
}

// expectError fails unless r has the given status and errcode.
func expectError(t *testing.T, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("got %d %q, want %d %s; body %s", r.Status, r.ErrCode(), status, errcode, r.Body)
	}
}

// expectTokenRevoked fails unless c's access token is rejected as unknown
// without soft logout.
func expectTokenRevoked(t *testing.T, c *testutil.Client) {
	t.Helper()
	r := c.Do("GET", whoamiPath, nil)
	expectError(t, r, 401, "M_UNKNOWN_TOKEN")
	if r.JSON["soft_logout"] == true {
		t.Fatalf("revoked token answered with soft_logout: %s", r.Body)
	}
}

// withTokenLifetime makes access tokens issued with refresh tokens expire.
func withTokenLifetime(d time.Duration) testutil.Option {
	return func(c *config.Config) { c.TokenLifetime = d }
}

func TestLoginFlows(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		r := srv.Client(t).MustDo(200, "GET", loginPath, nil)
		flows, _ := r.JSON["flows"].([]any)
		types := map[string]bool{}
		for _, f := range flows {
			typ, _ := f.(map[string]any)["type"].(string)
			types[typ] = true
		}
		if !types["m.login.password"] || !types["m.login.token"] || len(types) != 2 {
			t.Fatalf("flows = %s", r.Body)
		}
	})
}

func TestLoginPassword(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")

		for name, body := range map[string]map[string]any{
			"identifier localpart":        userIDLogin("alice", "secret"),
			"identifier full ID":          userIDLogin(alice.UserID, "secret"),
			"identifier upper case":       userIDLogin("ALICE", "secret"),
			"deprecated user":             {"type": "m.login.password", "user": "alice", "password": "secret"},
			"deprecated user, full ID":    {"type": "m.login.password", "user": alice.UserID, "password": "secret"},
			"identifier beats user field": {"type": "m.login.password", "user": "nobody", "password": "secret", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}},
		} {
			t.Run(name, func(t *testing.T) {
				c, r := logIn(t, srv, body)
				if c.UserID != alice.UserID {
					t.Fatalf("user_id = %q, want %q", c.UserID, alice.UserID)
				}
				if r.JSON["home_server"] != srv.Config.ServerName {
					t.Fatalf("home_server = %v", r.JSON["home_server"])
				}
				wk, _ := r.JSON["well_known"].(map[string]any)
				hs, _ := wk["m.homeserver"].(map[string]any)
				if hs["base_url"] != srv.Config.BaseURL() {
					t.Fatalf("well_known = %v", r.JSON["well_known"])
				}
				if _, ok := r.JSON["refresh_token"]; ok {
					t.Fatal("refresh_token given without being asked for")
				}
				if _, ok := r.JSON["expires_in_ms"]; ok {
					t.Fatal("expires_in_ms given for a token that does not expire")
				}
				w := c.MustDo(200, "GET", whoamiPath, nil)
				if w.JSON["user_id"] != alice.UserID || w.JSON["device_id"] != c.DeviceID || w.JSON["is_guest"] != false {
					t.Fatalf("whoami = %s", w.Body)
				}
			})
		}
	})
}

func TestLoginFailures(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		srv.NewUser(t, "alice", "secret")
		anon := srv.Client(t)

		wrong := anon.Do("POST", loginPath, userIDLogin("alice", "wrong"))
		expectError(t, wrong, 403, "M_FORBIDDEN")
		unknown := anon.Do("POST", loginPath, userIDLogin("nobody", "secret"))
		expectError(t, unknown, 403, "M_FORBIDDEN")
		if wrong.JSON["error"] != unknown.JSON["error"] {
			t.Fatalf("unknown user and wrong password are told apart: %q vs %q", unknown.JSON["error"], wrong.JSON["error"])
		}

		for _, tc := range []struct {
			name    string
			body    any
			status  int
			errcode string
		}{
			{"not JSON", "{nope", 400, "M_NOT_JSON"},
			{"empty body", "", 400, "M_NOT_JSON"},
			{"no type", map[string]any{"user": "alice", "password": "secret"}, 400, "M_MISSING_PARAM"},
			{"unknown type", map[string]any{"type": "m.login.magic"}, 400, "M_UNKNOWN"},
			{"password wrong type", map[string]any{"type": "m.login.password", "user": "alice", "password": 12}, 400, "M_BAD_JSON"},
			{"identifier wrong type", map[string]any{"type": "m.login.password", "identifier": "alice", "password": "secret"}, 400, "M_BAD_JSON"},
			{"no password", map[string]any{"type": "m.login.password", "user": "alice"}, 400, "M_MISSING_PARAM"},
			{"no identifier", map[string]any{"type": "m.login.password", "password": "secret"}, 400, "M_MISSING_PARAM"},
			{"identifier without type", map[string]any{"type": "m.login.password", "identifier": map[string]any{"user": "alice"}, "password": "secret"}, 400, "M_MISSING_PARAM"},
			{"identifier without user", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user"}, "password": "secret"}, 400, "M_MISSING_PARAM"},
			{"unknown identifier type", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.magic"}, "password": "secret"}, 400, "M_UNKNOWN"},
			{"third-party identifier", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.thirdparty", "medium": "email", "address": "a@example.org"}, "password": "secret"}, 403, "M_FORBIDDEN"},
			{"phone identifier", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.phone", "country": "GB", "phone": "07700900001"}, "password": "secret"}, 403, "M_FORBIDDEN"},
			{"third-party identifier incomplete", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.thirdparty", "medium": "email"}, "password": "secret"}, 400, "M_MISSING_PARAM"},
			{"deprecated medium and address", map[string]any{"type": "m.login.password", "medium": "email", "address": "a@example.org", "password": "secret"}, 403, "M_FORBIDDEN"},
			{"user of another server", userIDLogin("@alice:elsewhere.example", "secret"), 403, "M_FORBIDDEN"},
			{"device_id too long", map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "device_id": string(make([]byte, 300))}, 400, "M_INVALID_PARAM"},
			{"no token", map[string]any{"type": "m.login.token"}, 400, "M_MISSING_PARAM"},
			{"unknown token", map[string]any{"type": "m.login.token", "token": "pl_nope"}, 403, "M_FORBIDDEN"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				expectError(t, anon.Do("POST", loginPath, tc.body), tc.status, tc.errcode)
			})
		}
	})
}

func TestLoginDeviceReuse(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		srv.NewUser(t, "alice", "secret")
		body := userIDLogin("alice", "secret")
		body["device_id"] = "MYPHONE"
		body["initial_device_display_name"] = "Phone"
		first, _ := logIn(t, srv, body)
		if first.DeviceID != "MYPHONE" {
			t.Fatalf("device_id = %q, want MYPHONE", first.DeviceID)
		}

		body["initial_device_display_name"] = "Ignored for a known device"
		second, _ := logIn(t, srv, body)
		if second.DeviceID != "MYPHONE" {
			t.Fatalf("device_id = %q, want MYPHONE", second.DeviceID)
		}
		expectTokenRevoked(t, first)
		d := second.MustDo(200, "GET", devicesPath+"/MYPHONE", nil)
		if d.JSON["display_name"] != "Phone" {
			t.Fatalf("display name = %v, want the initial one", d.JSON["display_name"])
		}
		list := second.MustDo(200, "GET", devicesPath, nil)
		if n := len(list.JSON["devices"].([]any)); n != 2 { // NewUser's device and MYPHONE
			t.Fatalf("%d devices, want 2: %s", n, list.Body)
		}
	})
}

func TestLoginToken(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		ctx := context.Background()

		tok, err := srv.Accounts.CreateLoginToken(ctx, alice.UserID, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := logIn(t, srv, map[string]any{"type": "m.login.token", "token": tok})
		if c.UserID != alice.UserID {
			t.Fatalf("user_id = %q", c.UserID)
		}
		c.MustDo(200, "GET", whoamiPath, nil)
		// Single use.
		expectError(t, srv.Client(t).Do("POST", loginPath, map[string]any{"type": "m.login.token", "token": tok}), 403, "M_FORBIDDEN")

		expired, err := srv.Accounts.CreateLoginToken(ctx, alice.UserID, -time.Second)
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, srv.Client(t).Do("POST", loginPath, map[string]any{"type": "m.login.token", "token": expired}), 403, "M_FORBIDDEN")
	})
}

func TestLoginRateLimit(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) {
			c.RateLimit = "on"
			c.RateLimits.LoginBurst = 2
			c.RateLimits.LoginPerSecond = 0.001
		})
		srv.NewUser(t, "alice", "secret")
		anon := srv.Client(t)
		anon.MustDo(200, "POST", loginPath, userIDLogin("alice", "secret"))
		anon.MustDo(403, "POST", loginPath, userIDLogin("alice", "wrong"))
		r := anon.Do("POST", loginPath, userIDLogin("alice", "secret"))
		expectError(t, r, 429, "M_LIMIT_EXCEEDED")
		if ms, _ := r.JSON["retry_after_ms"].(float64); ms <= 0 {
			t.Fatalf("retry_after_ms = %v", r.JSON["retry_after_ms"])
		}
	})
}

func TestRefreshToken(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, withTokenLifetime(time.Hour))
		srv.NewUser(t, "alice", "secret")

		// Without refresh_token the access token does not expire.
		_, plain := logIn(t, srv, userIDLogin("alice", "secret"))
		if _, ok := plain.JSON["expires_in_ms"]; ok {
			t.Fatalf("expires_in_ms without refresh token: %s", plain.Body)
		}

		body := userIDLogin("alice", "secret")
		body["refresh_token"] = true
		c, r := logIn(t, srv, body)
		refresh, _ := r.JSON["refresh_token"].(string)
		if refresh == "" || r.JSON["expires_in_ms"] != float64(time.Hour.Milliseconds()) {
			t.Fatalf("login with refresh_token: %s", r.Body)
		}

		anon := srv.Client(t)
		nr := anon.MustDo(200, "POST", refreshPath, map[string]any{"refresh_token": refresh})
		newAccess, _ := nr.JSON["access_token"].(string)
		newRefresh, _ := nr.JSON["refresh_token"].(string)
		if newAccess == "" || newRefresh == "" || newRefresh == refresh || nr.JSON["expires_in_ms"] != float64(time.Hour.Milliseconds()) {
			t.Fatalf("refresh response: %s", nr.Body)
		}
		fresh := srv.Client(t)
		fresh.AccessToken = newAccess
		w := fresh.MustDo(200, "GET", whoamiPath, nil)
		if w.JSON["device_id"] != c.DeviceID {
			t.Fatalf("refreshed token is on device %v, want %s", w.JSON["device_id"], c.DeviceID)
		}
		expectTokenRevoked(t, c)

		old := anon.Do("POST", refreshPath, map[string]any{"refresh_token": refresh})
		expectError(t, old, 401, "M_UNKNOWN_TOKEN")
		expectError(t, anon.Do("POST", refreshPath, map[string]any{"refresh_token": "pr_unknown"}), 401, "M_UNKNOWN_TOKEN")
		expectError(t, anon.Do("POST", refreshPath, map[string]any{}), 400, "M_MISSING_PARAM")
		expectError(t, anon.Do("POST", refreshPath, map[string]any{"refresh_token": 5}), 400, "M_BAD_JSON")
		expectError(t, anon.Do("POST", refreshPath, "nope"), 400, "M_NOT_JSON")

		// The new refresh token works in turn.
		anon.MustDo(200, "POST", refreshPath, map[string]any{"refresh_token": newRefresh})
		expectTokenRevoked(t, fresh)
	})
}

func TestExpiredAccessTokenSoftLogout(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		const lifetime = time.Second
		srv := testutil.Start(t, b, withTokenLifetime(lifetime))
		srv.NewUser(t, "alice", "secret")
		body := userIDLogin("alice", "secret")
		body["refresh_token"] = true
		c, r := logIn(t, srv, body)
		c.MustDo(200, "GET", whoamiPath, nil)
		time.Sleep(lifetime + 100*time.Millisecond)

		exp := c.Do("GET", whoamiPath, nil)
		expectError(t, exp, 401, "M_UNKNOWN_TOKEN")
		if exp.JSON["soft_logout"] != true {
			t.Fatalf("expired token without soft_logout: %s", exp.Body)
		}
		// Refreshing brings the session back on the same device.
		nr := srv.Client(t).MustDo(200, "POST", refreshPath, map[string]any{"refresh_token": r.JSON["refresh_token"]})
		c.AccessToken, _ = nr.JSON["access_token"].(string)
		if w := c.MustDo(200, "GET", whoamiPath, nil); w.JSON["device_id"] != c.DeviceID {
			t.Fatalf("whoami after refresh: %s", w.Body)
		}
		// An expired token may still log out.
		time.Sleep(lifetime + 100*time.Millisecond)
		expectError(t, c.Do("GET", whoamiPath, nil), 401, "M_UNKNOWN_TOKEN")
		c.MustDo(200, "POST", "/_matrix/client/v3/logout", nil)
		expectTokenRevoked(t, c)
	})
}

func TestLogout(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		var deleted []string
		prev := srv.Accounts.Hooks.DeviceDeleted
		srv.Accounts.Hooks.DeviceDeleted = func(ctx context.Context, userID, deviceID string) {
			if prev != nil {
				prev(ctx, userID, deviceID)
			}
			deleted = append(deleted, deviceID)
		}
		phone, _ := logIn(t, srv, userIDLogin("alice", "secret"))

		phone.MustDo(200, "POST", "/_matrix/client/v3/logout", nil)
		expectTokenRevoked(t, phone)
		alice.MustDo(200, "GET", whoamiPath, nil)
		if len(deleted) != 1 || deleted[0] != phone.DeviceID {
			t.Fatalf("DeviceDeleted hook saw %v, want [%s]", deleted, phone.DeviceID)
		}
		list := alice.MustDo(200, "GET", devicesPath, nil)
		if n := len(list.JSON["devices"].([]any)); n != 1 {
			t.Fatalf("%d devices after logout, want 1: %s", n, list.Body)
		}

		anon := srv.Client(t)
		expectError(t, anon.Do("POST", "/_matrix/client/v3/logout", nil), 401, "M_MISSING_TOKEN")
		anon.AccessToken = "pa_nope"
		expectError(t, anon.Do("POST", "/_matrix/client/v3/logout", nil), 401, "M_UNKNOWN_TOKEN")
		expectError(t, anon.Do("POST", "/_matrix/client/v3/logout/all", nil), 401, "M_UNKNOWN_TOKEN")
	})
}

func TestLogoutAll(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		phone, _ := logIn(t, srv, userIDLogin("alice", "secret"))

		phone.MustDo(200, "POST", "/_matrix/client/v3/logout/all", nil)
		expectTokenRevoked(t, phone)
		expectTokenRevoked(t, alice)
		bob.MustDo(200, "GET", whoamiPath, nil)

		again, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		list := again.MustDo(200, "GET", devicesPath, nil)
		if n := len(list.JSON["devices"].([]any)); n != 1 {
			t.Fatalf("%d devices after logout/all and a new login, want 1: %s", n, list.Body)
		}
	})
}
