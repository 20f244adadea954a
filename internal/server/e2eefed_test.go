package server_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/testutil"
)

// signedObject signs obj as c's device with priv and returns it.
func signedObject(t *testing.T, c *testutil.Client, priv ed25519.PrivateKey, obj map[string]any) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(c.UserID, gomatrixserverlib.KeyID("ed25519:"+c.DeviceID), priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// uploadDeviceKeys uploads signed identity keys and one signed one-time
// key (ID "otk") for c's device.
func uploadDeviceKeys(t *testing.T, c *testutil.Client) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawStdEncoding.EncodeToString
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	dk := signedObject(t, c, priv, map[string]any{
		"user_id": c.UserID, "device_id": c.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + c.DeviceID: b64(curve), "ed25519:" + c.DeviceID: b64(pub)},
	})
	otk := signedObject(t, c, priv, map[string]any{"key": b64(curve)})
	c.MustDo(200, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys": dk, "one_time_keys": map[string]any{"signed_curve25519:otk": otk},
	})
}

// TestE2EEKeysOverFederation checks that a user of hs1 can query and claim
// the keys of a user of hs2, through the federation key endpoints.
func TestE2EEKeysOverFederation(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		network := testutil.NewNetwork(t, "hs1", "hs2")
		hs1 := network.Start(t, b, "hs1")
		hs2 := network.Start(t, b, "hs2")
		alice := hs1.NewUser(t, "alice", "password1234")
		bob := hs2.NewUser(t, "bob", "password1234")
		uploadDeviceKeys(t, bob)

		r := alice.MustDo(200, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}})
		if f, _ := r.JSON["failures"].(map[string]any); len(f) != 0 {
			t.Fatalf("failures: %s", r.Body)
		}
		dk, _ := r.JSON["device_keys"].(map[string]any)
		bobs, _ := dk[bob.UserID].(map[string]any)
		got, _ := bobs[bob.DeviceID].(map[string]any)
		if got["device_id"] != bob.DeviceID || got["user_id"] != bob.UserID {
			t.Fatalf("device keys of %s: %s", bob.UserID, r.Body)
		}

		claim := map[string]any{"one_time_keys": map[string]any{bob.UserID: map[string]string{bob.DeviceID: "signed_curve25519"}}}
		r = alice.MustDo(200, "POST", "/_matrix/client/v3/keys/claim", claim)
		otks, _ := r.JSON["one_time_keys"].(map[string]any)
		byDevice, _ := otks[bob.UserID].(map[string]any)
		keys, _ := byDevice[bob.DeviceID].(map[string]any)
		if _, ok := keys["signed_curve25519:otk"]; !ok {
			t.Fatalf("claim: %s", r.Body)
		}
		// The key is gone once claimed.
		r = alice.MustDo(200, "POST", "/_matrix/client/v3/keys/claim", claim)
		if otks, _ := r.JSON["one_time_keys"].(map[string]any); len(otks) != 0 {
			t.Fatalf("second claim: %s", r.Body)
		}

		// The device list endpoint, asked directly.
		var devices struct {
			UserID  string `json:"user_id"`
			Devices []struct {
				DeviceID string `json:"device_id"`
			} `json:"devices"`
		}
		if err := hs1.Federation.Client.Do(t.Context(), "hs2", "GET", "/_matrix/federation/v1/user/devices/"+bob.UserID, nil, &devices); err != nil {
			t.Fatal(err)
		}
		if devices.UserID != bob.UserID || len(devices.Devices) != 1 || devices.Devices[0].DeviceID != bob.DeviceID {
			t.Fatalf("devices: %+v", devices)
		}
		// Users of other servers are not served there.
		if err := hs1.Federation.Client.Do(t.Context(), "hs2", "GET", "/_matrix/federation/v1/user/devices/"+alice.UserID, nil, &devices); err == nil {
			t.Fatal("devices of a user of another server were served")
		}
	})
}

// syncUntil long-polls c's /sync from since ("": an initial sync) until
// found is true of a response (at most ten seconds), and returns that
// response's next_batch; it fails the test otherwise.
func syncUntil(t *testing.T, c *testutil.Client, since, what string, found func(*testutil.Response) bool) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		path := "/_matrix/client/v3/sync?timeout=1000"
		if since != "" {
			path += "&since=" + url.QueryEscape(since)
		}
		r := c.MustDo(200, "GET", path, nil)
		next, _ := r.JSON["next_batch"].(string)
		if found(r) {
			return next
		}
		since = next
	}
	t.Fatalf("%s never appeared in %s's sync", what, c.UserID)
	return ""
}

// TestToDeviceOverFederation checks that a to-device message of a user of
// hs1 reaches the device of a user of hs2 through m.direct_to_device.
func TestToDeviceOverFederation(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		network := testutil.NewNetwork(t, "hs1", "hs2")
		hs1 := network.Start(t, b, "hs1")
		hs2 := network.Start(t, b, "hs2")
		alice := hs1.NewUser(t, "alice", "password1234")
		bob := hs2.NewUser(t, "bob", "password1234")
		alice.MustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1", map[string]any{
			"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: map[string]any{"hello": "bob"}}},
		})
		syncUntil(t, bob, "", "the to-device message", func(r *testutil.Response) bool {
			td, _ := r.JSON["to_device"].(map[string]any)
			evs, _ := td["events"].([]any)
			for _, e := range evs {
				ev, _ := e.(map[string]any)
				content, _ := ev["content"].(map[string]any)
				if ev["type"] == "m.test" && ev["sender"] == alice.UserID && content["hello"] == "bob" {
					return true
				}
			}
			return false
		})
	})
}

// changedIn reports whether userID is in a sync response's
// device_lists.changed.
func changedIn(r *testutil.Response, userID string) bool {
	dl, _ := r.JSON["device_lists"].(map[string]any)
	changed, _ := dl["changed"].([]any)
	return slices.Contains(changed, any(userID))
}

// TestDeviceListsOverFederation checks that a new device of a user of hs2
// shows up in device_lists.changed of a user of hs1 sharing a room, through
// m.device_list_update, and that the new device's keys can be queried.
func TestDeviceListsOverFederation(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		network := testutil.NewNetwork(t, "hs1", "hs2")
		hs1 := network.Start(t, b, "hs1")
		hs2 := network.Start(t, b, "hs2")
		alice := hs1.NewUser(t, "alice", "password1234")
		bob := hs2.NewUser(t, "bob", "password1234")
		r := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
		roomID, _ := r.JSON["room_id"].(string)
		since := syncUntil(t, alice, "", "the room", func(r *testutil.Response) bool { return r.Status == 200 })
		bob.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?via=hs1", map[string]any{})
		since = syncUntil(t, alice, since, "bob's join", func(r *testutil.Response) bool { return changedIn(r, bob.UserID) })

		// Bob signs in on a new device and uploads its keys.
		login := bob.MustDo(200, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": bob.UserID}, "password": "password1234"})
		phone := hs2.Client(t)
		phone.UserID = bob.UserID
		phone.DeviceID, _ = login.JSON["device_id"].(string)
		phone.AccessToken, _ = login.JSON["access_token"].(string)
		uploadDeviceKeys(t, phone)

		syncUntil(t, alice, since, "bob's new device", func(r *testutil.Response) bool { return changedIn(r, bob.UserID) })
		r = alice.MustDo(200, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{bob.UserID: []string{}}})
		dk, _ := r.JSON["device_keys"].(map[string]any)
		if bobs, _ := dk[bob.UserID].(map[string]any); bobs[phone.DeviceID] == nil {
			t.Fatalf("bob's new device is not in %s", r.Body)
		}
	})
}
