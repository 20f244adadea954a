package e2ee_test

import (
	"net/url"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

const dehydratedPath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

// dehydratedBody is a PUT /dehydrated_device body for a new device of
// owner with the given ID.
func dehydratedBody(t testing.TB, srv *testutil.Server, owner *testutil.Client, deviceID string) map[string]any {
	t.Helper()
	// The dehydrated device signs like any device; it only needs a client
	// with its IDs to make its keys.
	c := srv.Client(t)
	c.UserID, c.DeviceID = owner.UserID, deviceID
	d := newDevice(t, c)
	return map[string]any{
		"device_id":                   deviceID,
		"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "encrypted"},
		"initial_device_display_name": "Backup device",
		"device_keys":                 d.deviceKeys(t),
		"one_time_keys":               d.oneTimeKeys(t, "D", 3),
		"fallback_keys":               d.fallbackKey(t, "DF"),
	}
}

func TestDehydratedDevice(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")

		wantError(t, "no dehydrated device", alice.Do("GET", dehydratedPath, nil), 404, "M_NOT_FOUND")
		r := alice.MustDo(200, "PUT", dehydratedPath, dehydratedBody(t, srv, alice, "DEHYD1"))
		if r.JSON["device_id"] != "DEHYD1" {
			t.Fatalf("PUT: %s", r.Body)
		}
		r = alice.MustDo(200, "GET", dehydratedPath, nil)
		if r.JSON["device_id"] != "DEHYD1" || dig(r.JSON, "device_data", "device_pickle") != "encrypted" {
			t.Fatalf("GET: %s", r.Body)
		}
		// Others see the device's keys and can claim its one-time keys.
		q := query(t, bob, alice.UserID)
		if dig(q, "device_keys", alice.UserID, "DEHYD1", "unsigned", "device_display_name") != "Backup device" {
			t.Fatalf("the dehydrated device's keys: %v", dig(q, "device_keys", alice.UserID))
		}
		claimed := bob.MustDo(200, "POST", "/_matrix/client/v3/keys/claim", map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]any{"DEHYD1": "signed_curve25519"}}})
		if dig(claimed.JSON, "one_time_keys", alice.UserID, "DEHYD1", "signed_curve25519:D0") == nil {
			t.Fatalf("claim: %s", claimed.Body)
		}

		// To-device messages wait for the rehydrating client, page by page,
		// and are not deleted by reading them.
		for i, txn := range []string{"a", "b", "c"} {
			sendToDevice(t, bob, txn, map[string]any{alice.UserID: map[string]any{"DEHYD1": map[string]any{"n": i}}})
		}
		events := dehydratedPath + "/DEHYD1/events"
		r = alice.MustDo(200, "POST", events, map[string]any{})
		if got := testEvents(t, r.JSON["events"], bob.UserID); len(got) != 3 || got[0] != 0 || got[2] != 2 {
			t.Fatalf("events: %s", r.Body)
		}
		next := r.JSON["next_batch"].(string)
		r = alice.MustDo(200, "POST", events, map[string]any{"next_batch": next})
		if evs, ok := r.JSON["events"].([]any); !ok || len(evs) != 0 || r.JSON["next_batch"] != next {
			t.Fatalf("the last batch: %s", r.Body)
		}
		if got := testEvents(t, alice.MustDo(200, "POST", events, nil).JSON["events"], bob.UserID); len(got) != 3 {
			t.Fatalf("reading again from the start: %v", got)
		}
		wantError(t, "events of another device", alice.Do("POST", dehydratedPath+"/"+url.PathEscape(alice.DeviceID)+"/events", map[string]any{}), 403, "M_FORBIDDEN")
		wantError(t, "bad next_batch", alice.Do("POST", events, map[string]any{"next_batch": "x"}), 400, "M_INVALID_PARAM")

		// A new dehydrated device replaces the old one and its keys.
		alice.MustDo(200, "PUT", dehydratedPath, dehydratedBody(t, srv, alice, "DEHYD2"))
		devices, _ := dig(query(t, bob, alice.UserID), "device_keys", alice.UserID).(map[string]any)
		if devices["DEHYD1"] != nil || devices["DEHYD2"] == nil {
			t.Fatalf("devices after replacing the dehydrated device: %v", devices)
		}
		wantError(t, "events of the replaced device", alice.Do("POST", events, map[string]any{}), 403, "M_FORBIDDEN")

		wantError(t, "the ID of a device in use", alice.Do("PUT", dehydratedPath, dehydratedBody(t, srv, alice, alice.DeviceID)), 400, "M_INVALID_PARAM")
		noData := dehydratedBody(t, srv, alice, "DEHYD3")
		delete(noData, "device_data")
		wantError(t, "no device_data", alice.Do("PUT", dehydratedPath, noData), 400, "M_MISSING_PARAM")
		forged := dehydratedBody(t, srv, alice, "DEHYD3")
		forged["device_keys"].(map[string]any)["device_id"] = "DEHYD4"
		wantError(t, "keys of another device", alice.Do("PUT", dehydratedPath, forged), 400, "M_INVALID_PARAM")
		if got := alice.MustDo(200, "GET", dehydratedPath, nil).JSON["device_id"]; got != "DEHYD2" {
			t.Fatalf("refused uploads replaced the device: %v", got)
		}

		r = alice.MustDo(200, "DELETE", dehydratedPath, nil)
		if r.JSON["device_id"] != "DEHYD2" {
			t.Fatalf("DELETE: %s", r.Body)
		}
		wantError(t, "deleted", alice.Do("GET", dehydratedPath, nil), 404, "M_NOT_FOUND")
		wantError(t, "deleted twice", alice.Do("DELETE", dehydratedPath, nil), 404, "M_NOT_FOUND")
	})
}
