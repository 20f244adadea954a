package accounts_test

import (
	"strings"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// passwordAuth is the auth dict of an m.login.password UIA stage.
func passwordAuth(session, user, password string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"session":    session,
		"identifier": map[string]any{"type": "m.id.user", "user": user},
		"password":   password,
	}
}

// uiaChallenge sends body without auth, expects the 401 challenge offering
// the m.login.password flow and returns its session.
func uiaChallenge(t *testing.T, c *testutil.Client, method, path string, body map[string]any) string {
	t.Helper()
	r := c.Do(method, path, body)
	if r.Status != 401 || r.ErrCode() != "" {
		t.Fatalf("%s %s without auth: %d %s, want a 401 challenge", method, path, r.Status, r.Body)
	}
	flows, _ := r.JSON["flows"].([]any)
	if len(flows) != 1 {
		t.Fatalf("flows = %v", r.JSON["flows"])
	}
	stages, _ := flows[0].(map[string]any)["stages"].([]any)
	if len(stages) != 1 || stages[0] != "m.login.password" {
		t.Fatalf("stages = %v", stages)
	}
	session, _ := r.JSON["session"].(string)
	if session == "" {
		t.Fatalf("challenge has no session: %s", r.Body)
	}
	return session
}

// doWithPassword runs the UIA dance: the challenge, then body again with
// the password stage; it returns the second answer.
func doWithPassword(t *testing.T, c *testutil.Client, method, path string, body map[string]any, password string) *testutil.Response {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	session := uiaChallenge(t, c, method, path, body)
	body["auth"] = passwordAuth(session, c.UserID, password)
	return c.Do(method, path, body)
}

func TestDevicesListGetRename(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		body := userIDLogin("alice", "secret")
		body["initial_device_display_name"] = "Laptop"
		laptop, _ := logIn(t, srv, body)

		list := alice.MustDo(200, "GET", devicesPath, nil)
		devices, _ := list.JSON["devices"].([]any)
		if len(devices) != 2 {
			t.Fatalf("devices = %s", list.Body)
		}
		seen := map[string]map[string]any{}
		for _, d := range devices {
			m := d.(map[string]any)
			seen[m["device_id"].(string)] = m
		}
		ld := seen[laptop.DeviceID]
		if ld == nil || ld["display_name"] != "Laptop" || ld["last_seen_ip"] != "127.0.0.1" {
			t.Fatalf("laptop device = %v", ld)
		}
		if ts, _ := ld["last_seen_ts"].(float64); ts <= 0 {
			t.Fatalf("last_seen_ts = %v", ld["last_seen_ts"])
		}
		if seen[alice.DeviceID] == nil {
			t.Fatalf("alice's first device missing: %s", list.Body)
		}

		one := alice.MustDo(200, "GET", devicesPath+"/"+laptop.DeviceID, nil)
		if one.JSON["device_id"] != laptop.DeviceID || one.JSON["display_name"] != "Laptop" {
			t.Fatalf("device = %s", one.Body)
		}
		expectError(t, alice.Do("GET", devicesPath+"/NOSUCH", nil), 404, "M_NOT_FOUND")
		// Another user's device is invisible.
		expectError(t, bob.Do("GET", devicesPath+"/"+laptop.DeviceID, nil), 404, "M_NOT_FOUND")

		alice.MustDo(200, "PUT", devicesPath+"/"+laptop.DeviceID, map[string]any{"display_name": "Work laptop"})
		if r := laptop.MustDo(200, "GET", devicesPath+"/"+laptop.DeviceID, nil); r.JSON["display_name"] != "Work laptop" {
			t.Fatalf("after rename: %s", r.Body)
		}
		// No display_name: nothing changes.
		alice.MustDo(200, "PUT", devicesPath+"/"+laptop.DeviceID, map[string]any{})
		if r := laptop.MustDo(200, "GET", devicesPath+"/"+laptop.DeviceID, nil); r.JSON["display_name"] != "Work laptop" {
			t.Fatalf("after empty PUT: %s", r.Body)
		}
		expectError(t, alice.Do("PUT", devicesPath+"/NOSUCH", map[string]any{"display_name": "x"}), 404, "M_NOT_FOUND")
		expectError(t, alice.Do("PUT", devicesPath+"/NOSUCH", map[string]any{}), 404, "M_NOT_FOUND")
		expectError(t, bob.Do("PUT", devicesPath+"/"+laptop.DeviceID, map[string]any{"display_name": "mine"}), 404, "M_NOT_FOUND")
		expectError(t, alice.Do("PUT", devicesPath+"/"+laptop.DeviceID, "nope"), 400, "M_NOT_JSON")
		expectError(t, alice.Do("PUT", devicesPath+"/"+laptop.DeviceID, map[string]any{"display_name": 3}), 400, "M_BAD_JSON")
		expectError(t, alice.Do("PUT", devicesPath+"/"+laptop.DeviceID, map[string]any{"display_name": strings.Repeat("x", 101)}), 400, "M_INVALID_PARAM")
		expectError(t, srv.Client(t).Do("GET", devicesPath, nil), 401, "M_MISSING_TOKEN")
	})
}

func TestDeleteDevice(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		srv.NewUser(t, "bob", "bobsecret")
		phone, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		path := devicesPath + "/" + phone.DeviceID

		// No body at all gets the challenge too.
		r := alice.Do("DELETE", path, nil)
		if r.Status != 401 || r.JSON["flows"] == nil {
			t.Fatalf("DELETE without body: %d %s", r.Status, r.Body)
		}

		// A wrong password fails the stage: 401 with the flows and M_FORBIDDEN.
		session := uiaChallenge(t, alice, "DELETE", path, map[string]any{})
		r = alice.Do("DELETE", path, map[string]any{"auth": passwordAuth(session, alice.UserID, "wrong")})
		if r.Status != 401 || r.ErrCode() != "M_FORBIDDEN" || r.JSON["flows"] == nil {
			t.Fatalf("wrong password: %d %s", r.Status, r.Body)
		}
		// Another user's password does not authenticate alice: refused
		// outright with 403, as Synapse does (Complement checks this).
		r = alice.Do("DELETE", path, map[string]any{"auth": passwordAuth(session, "bob", "bobsecret")})
		if r.Status != 403 || r.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("bob's password: %d %s", r.Status, r.Body)
		}
		phone.MustDo(200, "GET", whoamiPath, nil)

		alice.MustDo(200, "DELETE", path, map[string]any{"auth": passwordAuth(session, alice.UserID, "secret")})
		expectTokenRevoked(t, phone)
		expectError(t, alice.Do("GET", path, nil), 404, "M_NOT_FOUND")

		// Deleting a device that is gone already succeeds (spec: "or had been
		// removed previously").
		if r := doWithPassword(t, alice, "DELETE", devicesPath+"/NOSUCH", nil, "secret"); r.Status != 200 {
			t.Fatalf("deleting an unknown device: %d %s", r.Status, r.Body)
		}
		alice.MustDo(200, "GET", whoamiPath, nil)
		expectError(t, alice.Do("DELETE", path, "nope"), 400, "M_NOT_JSON")
	})
}

func TestDeleteDevices(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		one, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		two, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		three, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		const path = "/_matrix/client/v3/delete_devices"

		expectError(t, alice.Do("POST", path, map[string]any{}), 400, "M_MISSING_PARAM")
		expectError(t, alice.Do("POST", path, map[string]any{"devices": "ONE"}), 400, "M_BAD_JSON")
		expectError(t, alice.Do("POST", path, nil), 400, "M_NOT_JSON")

		r := doWithPassword(t, alice, "POST", path, map[string]any{"devices": []string{one.DeviceID, two.DeviceID, "NOSUCH"}}, "secret")
		if r.Status != 200 {
			t.Fatalf("delete_devices: %d %s", r.Status, r.Body)
		}
		expectTokenRevoked(t, one)
		expectTokenRevoked(t, two)
		three.MustDo(200, "GET", whoamiPath, nil)
		alice.MustDo(200, "GET", whoamiPath, nil)

		// An empty list deletes nothing.
		if r := doWithPassword(t, alice, "POST", path, map[string]any{"devices": []string{}}, "secret"); r.Status != 200 {
			t.Fatalf("empty delete_devices: %d %s", r.Status, r.Body)
		}
		list := alice.MustDo(200, "GET", devicesPath, nil)
		if n := len(list.JSON["devices"].([]any)); n != 2 {
			t.Fatalf("%d devices left, want 2: %s", n, list.Body)
		}
	})
}
