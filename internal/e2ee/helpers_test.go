package e2ee_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/testutil"
)

// Helpers shared by the E2EE tests: keys made and signed the way a client
// makes them, and a syncing position.

// b64 is unpadded standard base64, the encoding of Matrix keys.
func b64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// keyPair is an ed25519 key of a device or a cross-signing key.
type keyPair struct {
	pub  string
	priv ed25519.PrivateKey
}

func newKeyPair(t testing.TB) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{pub: b64(pub), priv: priv}
}

// randomKey is a random 32-byte key in base64 (a stand-in curve25519 key:
// the server never looks inside).
func randomKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b64(b)
}

// sign signs obj as signer with keyID and returns the signed object.
func sign(t testing.TB, obj map[string]any, signer, keyID string, priv ed25519.PrivateKey) map[string]any {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(signer, gomatrixserverlib.KeyID(keyID), priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(signed, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// device is a client device with its own signing key.
type device struct {
	*testutil.Client
	key keyPair
}

func newDevice(t testing.TB, c *testutil.Client) *device {
	return &device{Client: c, key: newKeyPair(t)}
}

// keyID is the device's signing key ID.
func (d *device) keyID() string { return "ed25519:" + d.DeviceID }

// deviceKeys are the device's identity keys, signed by it.
func (d *device) deviceKeys(t testing.TB) map[string]any {
	t.Helper()
	return sign(t, map[string]any{
		"user_id":    d.UserID,
		"device_id":  d.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + d.DeviceID: randomKey(t), d.keyID(): d.key.pub},
	}, d.UserID, d.keyID(), d.key.priv)
}

// oneTimeKeys are n signed curve25519 keys with IDs prefix0, prefix1 …
func (d *device) oneTimeKeys(t testing.TB, prefix string, n int) map[string]any {
	t.Helper()
	out := map[string]any{}
	for i := range n {
		out[fmt.Sprintf("signed_curve25519:%s%d", prefix, i)] = sign(t, map[string]any{"key": randomKey(t)}, d.UserID, d.keyID(), d.key.priv)
	}
	return out
}

// fallbackKey is a signed fallback key with the given ID.
func (d *device) fallbackKey(t testing.TB, id string) map[string]any {
	t.Helper()
	return map[string]any{"signed_curve25519:" + id: sign(t, map[string]any{"key": randomKey(t), "fallback": true}, d.UserID, d.keyID(), d.key.priv)}
}

// upload uploads keys and wants 200; it returns the one-time key counts.
func (d *device) upload(t testing.TB, body map[string]any) map[string]any {
	t.Helper()
	r := d.MustDo(200, "POST", "/_matrix/client/v3/keys/upload", body)
	counts, _ := r.JSON["one_time_key_counts"].(map[string]any)
	return counts
}

// crossSigningKey is the public object of a cross-signing key, signed by
// signer (nil: unsigned).
func crossSigningKey(t testing.TB, userID, usage string, k keyPair, signer *keyPair) map[string]any {
	t.Helper()
	obj := map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
	if signer != nil {
		obj = sign(t, obj, userID, "ed25519:"+signer.pub, signer.priv)
	}
	return obj
}

// syncer follows a client's /sync.
type syncer struct {
	c     *testutil.Client
	since string
}

// sync makes a /sync request (timeout 0) from the current position and
// moves to its next_batch.
func (s *syncer) sync(t testing.TB) map[string]any {
	t.Helper()
	path := "/_matrix/client/v3/sync?timeout=0"
	if s.since != "" {
		path += "&since=" + url.QueryEscape(s.since)
	}
	r := s.c.MustDo(200, "GET", path, nil)
	s.since = r.JSON["next_batch"].(string)
	return r.JSON
}

// dig walks nested JSON objects.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// strings lists the strings of a JSON array.
func stringList(v any) []string {
	arr, _ := v.([]any)
	out := []string{}
	for _, x := range arr {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// wantError fails unless r is an error with status and errcode.
func wantError(t testing.TB, what string, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("%s: %d %s, want %d %s", what, r.Status, r.Body, status, errcode)
	}
}

// createRoom creates a room and returns its ID.
func createRoom(t testing.TB, c *testutil.Client, body map[string]any) string {
	t.Helper()
	return c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body).JSON["room_id"].(string)
}

// join joins c to a room.
func join(t testing.TB, c *testutil.Client, roomID string) {
	t.Helper()
	c.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/join", map[string]any{})
}

// leave makes c leave a room.
func leave(t testing.TB, c *testutil.Client, roomID string) {
	t.Helper()
	c.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{})
}

// eventually waits until cond holds, failing the test after ten seconds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mustJSON decodes a JSON object.
func mustJSON(t testing.TB, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return m
}
