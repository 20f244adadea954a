package push_test

import (
	"testing"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

// allowPrivate lets pushers reach the test gateway on the loopback
// interface.
func allowPrivate(c *config.Config) { c.Push.AllowPrivate = true }

// pusherBody is a valid POST /pushers/set body.
func pusherBody(appID, pushkey, url string) map[string]any {
	return map[string]any{"kind": "http", "app_id": appID, "pushkey": pushkey, "app_display_name": "App",
		"device_display_name": "Phone", "profile_tag": "tag", "lang": "en", "data": map[string]any{"url": url}}
}

// pushkeys lists the pushkeys of the user's pushers.
func pushkeys(t *testing.T, c *testutil.Client) []string {
	t.Helper()
	var out []string
	for _, p := range c.MustDo(200, "GET", "/_matrix/client/v3/pushers", nil).JSON["pushers"].([]any) {
		out = append(out, p.(map[string]any)["pushkey"].(string))
	}
	return out
}

// login opens another session (device) of a user created with password pw.
func login(t *testing.T, c *testutil.Client, pw string) *testutil.Client {
	t.Helper()
	r := c.MustDo(200, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": c.UserID}, "password": pw})
	other := *c
	other.AccessToken, other.DeviceID = r.JSON["access_token"].(string), r.JSON["device_id"].(string)
	return &other
}

const gatewayURL = "https://push.example.org/_matrix/push/v1/notify"

func TestPushersAPI(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		if keys := pushkeys(t, alice); len(keys) != 0 {
			t.Fatalf("pushers of a new user: %v", keys)
		}
		body := pusherBody("com.example.app", "key1", gatewayURL)
		body["data"] = map[string]any{"url": gatewayURL, "format": "event_id_only", "custom": 1}
		alice.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", body)
		r := alice.MustDo(200, "GET", "/_matrix/client/v3/pushers", nil)
		p := r.JSON["pushers"].([]any)[0].(map[string]any)
		if p["kind"] != "http" || p["app_id"] != "com.example.app" || p["app_display_name"] != "App" || p["device_display_name"] != "Phone" ||
			p["profile_tag"] != "tag" || p["lang"] != "en" || dig(p, "data", "url") != gatewayURL || dig(p, "data", "format") != "event_id_only" {
			t.Errorf("pusher: %s", r.Body)
		}
		// Setting it again updates it.
		body["lang"] = "fr"
		alice.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", body)
		r = alice.MustDo(200, "GET", "/_matrix/client/v3/pushers", nil)
		if ps := r.JSON["pushers"].([]any); len(ps) != 1 || ps[0].(map[string]any)["lang"] != "fr" {
			t.Errorf("after update: %s", r.Body)
		}
		// Without append, the pushkey moves to the user who sets it; with
		// append, it is shared.
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("com.example.app", "key1", gatewayURL))
		if keys := pushkeys(t, alice); len(keys) != 0 {
			t.Errorf("alice kept a pushkey bob took: %v", keys)
		}
		shared := pusherBody("com.example.app", "key1", gatewayURL)
		shared["append"] = true
		alice.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", shared)
		if a, b := pushkeys(t, alice), pushkeys(t, bob); len(a) != 1 || len(b) != 1 {
			t.Errorf("appended pusher: alice %v bob %v", a, b)
		}
		// kind null deletes.
		alice.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", map[string]any{"kind": nil, "app_id": "com.example.app", "pushkey": "key1"})
		if keys := pushkeys(t, alice); len(keys) != 0 {
			t.Errorf("deleted pusher still listed: %v", keys)
		}
		for _, c := range []struct {
			name    string
			change  func(map[string]any)
			errcode string
		}{
			{"missing kind", func(m map[string]any) { delete(m, "kind") }, "M_MISSING_PARAM"},
			{"missing pushkey", func(m map[string]any) { delete(m, "pushkey") }, "M_MISSING_PARAM"},
			{"missing app_id", func(m map[string]any) { delete(m, "app_id") }, "M_MISSING_PARAM"},
			{"missing lang", func(m map[string]any) { delete(m, "lang") }, "M_MISSING_PARAM"},
			{"missing data", func(m map[string]any) { delete(m, "data") }, "M_MISSING_PARAM"},
			{"missing url", func(m map[string]any) { m["data"] = map[string]any{} }, "M_MISSING_PARAM"},
			{"wrong path", func(m map[string]any) { m["data"] = map[string]any{"url": "https://push.example.org/notify"} }, "M_INVALID_PARAM"},
			{"not http", func(m map[string]any) {
				m["data"] = map[string]any{"url": "ftp://push.example.org/_matrix/push/v1/notify"}
			}, "M_INVALID_PARAM"},
			{"not a URL", func(m map[string]any) { m["data"] = map[string]any{"url": "push"} }, "M_INVALID_PARAM"},
			{"url not a string", func(m map[string]any) { m["data"] = map[string]any{"url": 5} }, "M_BAD_JSON"},
			{"data not an object", func(m map[string]any) { m["data"] = "x" }, "M_BAD_JSON"},
			{"email kind", func(m map[string]any) { m["kind"] = "email" }, "M_INVALID_PARAM"},
			{"unknown kind", func(m map[string]any) { m["kind"] = "carrier-pigeon" }, "M_INVALID_PARAM"},
			{"kind not a string", func(m map[string]any) { m["kind"] = 1 }, "M_BAD_JSON"},
			{"pushkey too long", func(m map[string]any) { m["pushkey"] = string(make([]byte, 513)) }, "M_INVALID_PARAM"},
			{"app_id too long", func(m map[string]any) {
				m["app_id"] = "a234567890123456789012345678901234567890123456789012345678901234x"
			}, "M_INVALID_PARAM"},
			{"append not a boolean", func(m map[string]any) { m["append"] = "yes" }, "M_BAD_JSON"},
		} {
			t.Run(c.name, func(t *testing.T) {
				body := pusherBody("com.example.app", "key2", gatewayURL)
				c.change(body)
				if r := alice.Do("POST", "/_matrix/client/v3/pushers/set", body); r.Status != 400 || r.ErrCode() != c.errcode {
					t.Errorf("%d %s, want 400 %s", r.Status, r.Body, c.errcode)
				}
			})
		}
		if keys := pushkeys(t, alice); len(keys) != 0 {
			t.Errorf("refused pushers stored: %v", keys)
		}
	})
}

func TestPushersRemovedWithTheirDevice(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		phone := srv.NewUser(t, "alice", "pw")
		laptop := login(t, phone, "pw")
		tablet := login(t, phone, "pw")
		phone.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "phone", gatewayURL))
		laptop.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "laptop", gatewayURL))
		tablet.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "tablet", gatewayURL))
		if keys := pushkeys(t, phone); len(keys) != 3 {
			t.Fatalf("pushers %v", keys)
		}
		// Logging out removes the device's pushers only.
		tablet.MustDo(200, "POST", "/_matrix/client/v3/logout", map[string]any{})
		if keys := pushkeys(t, phone); len(keys) != 2 || contains(keys, "tablet") {
			t.Fatalf("after logout: %v", keys)
		}
		// A password change logs the other devices out, with their
		// pushers; the pusher of the device making the change stays.
		phone.MustDo(200, "POST", "/_matrix/client/v3/account/password", map[string]any{"new_password": "pw2",
			"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": phone.UserID}, "password": "pw"}})
		if keys := pushkeys(t, phone); len(keys) != 1 || keys[0] != "phone" {
			t.Fatalf("after password change: %v", keys)
		}
	})
}
