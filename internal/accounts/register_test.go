package accounts_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

const registerPath = "/_matrix/client/v3/register"

// body is a JSON request body.
type body = map[string]any

// withRegistration sets the registration mode of a test server.
func withRegistration(mode string) testutil.Option {
	return func(c *config.Config) { c.Registration = mode }
}

// wantError fails the test unless r is the Matrix error status/errcode.
func wantError(t *testing.T, what string, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("%s: got %d %s, want %d %s", what, r.Status, r.Body, status, errcode)
	}
}

// wantTokenWorks checks that an access token authenticates a request.
func wantTokenWorks(t *testing.T, srv *testutil.Server, token string) {
	t.Helper()
	if token == "" {
		t.Fatal("no access token")
	}
	c := srv.Client(t)
	c.AccessToken = token
	c.MustDo(http.StatusOK, "GET", "/_matrix/client/v3/capabilities", nil)
}

// flows returns the stage lists of a UIA challenge.
func flows(t *testing.T, r *testutil.Response) [][]string {
	t.Helper()
	raw, ok := r.JSON["flows"].([]any)
	if !ok {
		t.Fatalf("no flows in %s", r.Body)
	}
	var out [][]string
	for _, f := range raw {
		var stages []string
		for _, s := range f.(map[string]any)["stages"].([]any) {
			stages = append(stages, s.(string))
		}
		out = append(out, stages)
	}
	return out
}

// challenge sends req without auth and returns the UIA session of the 401.
func challenge(t *testing.T, c *testutil.Client, req body) (string, *testutil.Response) {
	t.Helper()
	r := c.MustDo(http.StatusUnauthorized, "POST", registerPath, req)
	if r.ErrCode() != "" {
		t.Fatalf("challenge carries an errcode: %s", r.Body)
	}
	sid, _ := r.JSON["session"].(string)
	if sid == "" {
		t.Fatalf("no session in %s", r.Body)
	}
	return sid, r
}

// withAuth returns a copy of req with an auth dict.
func withAuth(req body, auth body) body {
	out := body{"auth": auth}
	for k, v := range req {
		out[k] = v
	}
	return out
}

// registerWithToken runs the registration-token flow to completion and
// returns the final answer.
func registerWithToken(t *testing.T, c *testutil.Client, req body, token string) *testutil.Response {
	t.Helper()
	sid, _ := challenge(t, c, req)
	return c.Do("POST", registerPath, withAuth(req, body{"type": "m.login.registration_token", "token": token, "session": sid}))
}

func TestRegisterOpen(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		c := srv.Client(t)

		req := body{"username": "Alice", "password": "correct horse", "initial_device_display_name": "Phone"}
		sid, r := challenge(t, c, req)
		got := flows(t, r)
		if !slices.ContainsFunc(got, func(f []string) bool { return slices.Equal(f, []string{"m.login.dummy"}) }) ||
			!slices.ContainsFunc(got, func(f []string) bool { return slices.Equal(f, []string{"m.login.registration_token"}) }) {
			t.Fatalf("open registration flows: %v", got)
		}
		r = c.MustDo(http.StatusOK, "POST", registerPath, withAuth(req, body{"type": "m.login.dummy", "session": sid}))
		// The username is lower-cased, as Synapse does.
		if uid := r.JSON["user_id"]; uid != "@alice:"+srv.Config.ServerName {
			t.Fatalf("user_id %v", uid)
		}
		if r.JSON["device_id"] == nil || r.JSON["home_server"] != srv.Config.ServerName || r.JSON["refresh_token"] != nil {
			t.Fatalf("register answer: %s", r.Body)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
		devs, err := srv.Accounts.ListDevices(context.Background(), "@alice:"+srv.Config.ServerName)
		if err != nil || len(devs) != 1 || devs[0].DisplayName == nil || *devs[0].DisplayName != "Phone" {
			t.Fatalf("devices after registration: %+v %v", devs, err)
		}
		// The completed session is gone.
		r = c.Do("POST", registerPath, withAuth(body{"username": "alice2", "password": "pw"}, body{"type": "m.login.dummy", "session": sid}))
		wantError(t, "reused UIA session", r, http.StatusBadRequest, "M_UNKNOWN")

		// A dummy stage without a session completes in one request; the
		// client's device_id is kept; refresh tokens are issued on request.
		r = c.MustDo(http.StatusOK, "POST", registerPath, body{
			"username": "bob", "password": "pw", "device_id": "BOBPHONE", "refresh_token": true,
			"auth": body{"type": "m.login.dummy"},
		})
		if r.JSON["device_id"] != "BOBPHONE" || r.JSON["refresh_token"] == nil {
			t.Fatalf("register with device_id and refresh_token: %s", r.Body)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))

		// Without a username the server picks a numeric localpart.
		r = c.MustDo(http.StatusOK, "POST", registerPath, body{"password": "pw", "auth": body{"type": "m.login.dummy"}})
		uid, _ := r.JSON["user_id"].(string)
		local := strings.TrimPrefix(strings.TrimSuffix(uid, ":"+srv.Config.ServerName), "@")
		if local == "" || strings.Trim(local, "0123456789") != "" {
			t.Fatalf("generated user ID %q", uid)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
	})
}

func TestRegisterUsernameChecks(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		srv.NewUser(t, "taken", "pw")
		c := srv.Client(t)

		// Checked on the first request, before any authentication.
		for _, tc := range []struct {
			username, errcode string
		}{
			{"taken", "M_USER_IN_USE"},
			{"TAKEN", "M_USER_IN_USE"},
			{"bad!name", "M_INVALID_USERNAME"},
			{"with space", "M_INVALID_USERNAME"},
			{"é", "M_INVALID_USERNAME"},
			{"_bridge_user", "M_INVALID_USERNAME"},
			{"", "M_INVALID_USERNAME"},
			{strings.Repeat("a", 300), "M_INVALID_USERNAME"},
		} {
			r := c.Do("POST", registerPath, body{"username": tc.username, "password": "pw"})
			wantError(t, "register "+tc.username, r, http.StatusBadRequest, tc.errcode)
			r = c.Do("GET", registerPath+"/available?username="+url.QueryEscape(tc.username), nil)
			wantError(t, "available "+tc.username, r, http.StatusBadRequest, tc.errcode)
		}
		// And again when the authentication completes.
		r := c.Do("POST", registerPath, body{"username": "taken", "password": "pw", "auth": body{"type": "m.login.dummy"}})
		wantError(t, "register taken with auth", r, http.StatusBadRequest, "M_USER_IN_USE")

		r = c.MustDo(http.StatusOK, "GET", registerPath+"/available?username=free.name", nil)
		if r.JSON["available"] != true {
			t.Fatalf("available: %s", r.Body)
		}
		r = c.Do("GET", registerPath+"/available", nil)
		wantError(t, "available without username", r, http.StatusBadRequest, "M_MISSING_PARAM")
	})
}

func TestRegisterPasswordRequired(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		c := srv.Client(t)
		sid, _ := challenge(t, c, body{"username": "carol"})
		r := c.Do("POST", registerPath, body{"username": "carol", "auth": body{"type": "m.login.dummy", "session": sid}})
		wantError(t, "no password", r, http.StatusBadRequest, "M_MISSING_PARAM")
		r = c.Do("POST", registerPath, body{"username": "carol", "password": strings.Repeat("x", 513), "auth": body{"type": "m.login.dummy", "session": sid}})
		wantError(t, "password too long", r, http.StatusBadRequest, "M_INVALID_PARAM")
		// The session survives the refusals.
		r = c.MustDo(http.StatusOK, "POST", registerPath, body{"username": "carol", "password": "pw", "auth": body{"type": "m.login.dummy", "session": sid}})
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
	})
}

func TestRegisterInhibitLogin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		c := srv.Client(t)
		r := c.MustDo(http.StatusOK, "POST", registerPath, body{
			"username": "dave", "password": "pw", "inhibit_login": true, "auth": body{"type": "m.login.dummy"},
		})
		if r.JSON["user_id"] != "@dave:"+srv.Config.ServerName {
			t.Fatalf("user_id: %s", r.Body)
		}
		for _, k := range []string{"access_token", "device_id", "refresh_token", "expires_in_ms"} {
			if _, ok := r.JSON[k]; ok {
				t.Errorf("inhibit_login answer has %s: %s", k, r.Body)
			}
		}
		devs, err := srv.Accounts.ListDevices(context.Background(), "@dave:"+srv.Config.ServerName)
		if err != nil || len(devs) != 0 {
			t.Fatalf("devices after inhibit_login: %+v %v", devs, err)
		}
		r = c.Do("GET", registerPath+"/available?username=dave", nil)
		wantError(t, "available after inhibit_login", r, http.StatusBadRequest, "M_USER_IN_USE")
	})
}

func TestRegisterRefreshTokenLifetime(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) { c.TokenLifetime = 5 * time.Minute })
		r := srv.Client(t).MustDo(http.StatusOK, "POST", registerPath, body{
			"username": "erin", "password": "pw", "refresh_token": true, "auth": body{"type": "m.login.dummy"},
		})
		if ms, _ := r.JSON["expires_in_ms"].(float64); ms != 300000 || r.JSON["refresh_token"] == nil {
			t.Fatalf("refresh answer: %s", r.Body)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
	})
}

func TestRegisterTokenMode(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, withRegistration(config.RegistrationToken))
		ctx := context.Background()
		if _, err := srv.Accounts.CreateRegistrationToken(ctx, "once", 1, time.Time{}); err != nil {
			t.Fatal(err)
		}
		c := srv.Client(t)
		validity := func(token string) any {
			return c.MustDo(http.StatusOK, "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token="+token, nil).JSON["valid"]
		}
		if v := validity("once"); v != true {
			t.Fatalf("validity of a fresh token: %v", v)
		}
		if v := validity("nosuch"); v != false {
			t.Fatalf("validity of an unknown token: %v", v)
		}

		req := body{"username": "frank", "password": "pw"}
		sid, r := challenge(t, c, req)
		if got := flows(t, r); !slices.Equal(got[0], []string{"m.login.registration_token"}) || len(got) != 1 {
			t.Fatalf("token registration flows: %v", got)
		}
		// Dummy is not offered; a wrong token fails the stage.
		r = c.Do("POST", registerPath, withAuth(req, body{"type": "m.login.dummy", "session": sid}))
		wantError(t, "dummy stage in token mode", r, http.StatusUnauthorized, "M_BAD_JSON")
		r = c.Do("POST", registerPath, withAuth(req, body{"type": "m.login.registration_token", "token": "wrong", "session": sid}))
		wantError(t, "wrong token", r, http.StatusUnauthorized, "M_FORBIDDEN")
		if r.JSON["flows"] == nil || r.JSON["session"] != sid {
			t.Fatalf("failed stage without flows: %s", r.Body)
		}

		r = c.MustDo(http.StatusOK, "POST", registerPath, withAuth(req, body{"type": "m.login.registration_token", "token": "once", "session": sid}))
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
		if v := validity("once"); v != false {
			t.Fatalf("validity of a used-up token: %v", v)
		}
		r = registerWithToken(t, c, body{"username": "grace", "password": "pw"}, "once")
		wantError(t, "second use of a one-use token", r, http.StatusUnauthorized, "M_FORBIDDEN")
		if ok, _ := srv.Accounts.UserExists(ctx, "@grace:"+srv.Config.ServerName); ok {
			t.Fatal("account created with a used-up token")
		}

		// An unlimited token serves several registrations.
		if _, err := srv.Accounts.CreateRegistrationToken(ctx, "many", 0, time.Time{}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"heidi", "ivan"} {
			r = registerWithToken(t, c, body{"username": name, "password": "pw"}, "many")
			if r.Status != http.StatusOK {
				t.Fatalf("register %s with an unlimited token: %d %s", name, r.Status, r.Body)
			}
		}

		r = c.Do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", nil)
		wantError(t, "validity without token", r, http.StatusBadRequest, "M_MISSING_PARAM")
	})
}

func TestRegisterClosed(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, withRegistration(config.RegistrationClosed))
		ctx := context.Background()
		c := srv.Client(t)
		req := body{"username": "judy", "password": "pw"}

		closed := func(what string) {
			t.Helper()
			wantError(t, what, c.Do("POST", registerPath, req), http.StatusForbidden, "M_FORBIDDEN")
			wantError(t, what+" (available)", c.Do("GET", registerPath+"/available?username=judy2", nil), http.StatusForbidden, "M_FORBIDDEN")
		}
		closed("closed registration")
		// An expired token does not open it.
		if _, err := srv.Accounts.CreateRegistrationToken(ctx, "old", 0, time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		closed("closed registration with an expired token")

		// The first-start token opens the token flow for one registration.
		tok, err := srv.Accounts.FirstStartToken(ctx)
		if err != nil || tok == "" {
			t.Fatalf("first-start token: %q %v", tok, err)
		}
		sid, r := challenge(t, c, req)
		if got := flows(t, r); len(got) != 1 || !slices.Equal(got[0], []string{"m.login.registration_token"}) {
			t.Fatalf("closed-with-token flows: %v", got)
		}
		r = c.MustDo(http.StatusOK, "POST", registerPath, withAuth(req, body{"type": "m.login.registration_token", "token": tok, "session": sid}))
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
		req["username"] = "judy3"
		closed("closed registration after the token was used")
	})
}

func TestRegisterGuest(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		r := srv.Client(t).Do("POST", registerPath+"?kind=guest", body{})
		wantError(t, "guest registration off", r, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
		r = srv.Client(t).Do("POST", registerPath+"?kind=robot", body{})
		wantError(t, "unknown kind", r, http.StatusBadRequest, "M_INVALID_PARAM")

		srv = testutil.Start(t, b, func(c *config.Config) { c.AllowGuests = true; c.Registration = config.RegistrationClosed })
		// Guests need no UIA, and every field but the display name is ignored.
		r = srv.Client(t).MustDo(http.StatusOK, "POST", registerPath+"?kind=guest", body{
			"username": "notme", "device_id": "CHOSEN", "initial_device_display_name": "Guest browser",
		})
		uid, _ := r.JSON["user_id"].(string)
		if strings.HasPrefix(uid, "@notme:") || r.JSON["device_id"] == "CHOSEN" || r.JSON["device_id"] == nil {
			t.Fatalf("guest answer: %s", r.Body)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
		u, err := srv.Accounts.GetUser(context.Background(), uid)
		if err != nil || u == nil || !u.IsGuest {
			t.Fatalf("guest account: %+v %v", u, err)
		}
	})
}

func TestRegisterMalformed(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		c := srv.Client(t)
		for _, tc := range []struct {
			name    string
			body    any
			errcode string
		}{
			{"empty body", "", "M_NOT_JSON"},
			{"not JSON", "username=alice", "M_NOT_JSON"},
			{"truncated JSON", `{"username": "alice"`, "M_NOT_JSON"},
			{"array", `["alice"]`, "M_BAD_JSON"},
			{"username number", body{"username": 5}, "M_BAD_JSON"},
			{"password object", body{"username": "x", "password": body{}}, "M_BAD_JSON"},
			{"auth string", body{"auth": "dummy"}, "M_BAD_JSON"},
			{"inhibit_login string", body{"inhibit_login": "yes"}, "M_BAD_JSON"},
			{"refresh_token number", body{"refresh_token": 1}, "M_BAD_JSON"},
			{"device_id too long", body{"device_id": strings.Repeat("D", 300)}, "M_INVALID_PARAM"},
		} {
			r := c.Do("POST", registerPath, tc.body)
			wantError(t, tc.name, r, http.StatusBadRequest, tc.errcode)
		}
	})
}

func TestRegisterRateLimit(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b, func(c *config.Config) {
			c.RateLimit = "on"
			c.RateLimits.RegisterBurst = 2
			c.RateLimits.RegisterPerSecond = 0.001
		})
		c := srv.Client(t)
		for _, path := range []string{registerPath + "/available?username=a", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x"} {
			c.MustDo(http.StatusOK, "GET", path, nil)
		}
		// The three endpoints share the per-IP budget, now spent.
		for _, tc := range []struct {
			method, path string
			body         any
		}{
			{"GET", registerPath + "/available?username=a", nil},
			{"GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x", nil},
			{"POST", registerPath, body{}},
		} {
			r := c.Do(tc.method, tc.path, tc.body)
			wantError(t, tc.path, r, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			if ms, _ := r.JSON["retry_after_ms"].(float64); ms <= 0 {
				t.Errorf("%s: no retry_after_ms: %s", tc.path, r.Body)
			}
		}
	})
}
