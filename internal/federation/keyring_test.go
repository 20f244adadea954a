package federation

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

func testKey(t *testing.T, version string) *SigningKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &SigningKey{ID: "ed25519:" + version, Private: priv}
}

// keysResponse builds a server-keys response listing keys and signed by
// signers.
func keysResponse(t *testing.T, server string, keys []*SigningKey, old map[string]any, signers ...*SigningKey) []byte {
	t.Helper()
	vk := map[string]any{}
	for _, k := range keys {
		vk[k.ID] = map[string]string{"key": base64.RawStdEncoding.EncodeToString(k.Public())}
	}
	raw, err := json.Marshal(map[string]any{
		"server_name": server, "verify_keys": vk, "old_verify_keys": old,
		"valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range signers {
		if raw, err = gomatrixserverlib.SignJSON(server, gomatrixserverlib.KeyID(s.ID), s.Private, raw); err != nil {
			t.Fatal(err)
		}
	}
	return raw
}

func TestCheckServerKeys(t *testing.T) {
	k1, k2 := testKey(t, "one"), testKey(t, "two")
	oldPub := base64.RawStdEncoding.EncodeToString(testKey(t, "old").Public())
	old := map[string]any{
		"ed25519:old":  map[string]any{"key": oldPub, "expired_ts": 1000},
		"ed25519:zero": map[string]any{"key": oldPub, "expired_ts": 0},
		"ed25519:bad":  map[string]any{"key": "AAAA", "expired_ts": 1000},
		"other:x":      map[string]any{"key": oldPub, "expired_ts": 1000},
	}
	now := time.Now()
	r, err := checkServerKeys("a.org", keysResponse(t, "a.org", []*SigningKey{k1, k2}, old, k1, k2), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.current) != 2 || !r.current["ed25519:one"].Equal(k1.Public()) || len(r.old) != 2 ||
		r.old["ed25519:old"].expired.UnixMilli() != 1000 || r.old["ed25519:zero"].expired.UnixMilli() != 1 {
		t.Fatalf("%+v", r)
	}
	var tampered map[string]any
	if err := json.Unmarshal(keysResponse(t, "a.org", []*SigningKey{k1}, nil, k1), &tampered); err != nil {
		t.Fatal(err)
	}
	tampered["valid_until_ts"] = time.Now().Add(1000 * time.Hour).UnixMilli()
	tamperedRaw, _ := json.Marshal(tampered)
	for name, raw := range map[string][]byte{
		"other server":         keysResponse(t, "b.org", []*SigningKey{k1}, nil, k1),
		"key not signing":      keysResponse(t, "a.org", []*SigningKey{k1, k2}, nil, k1),
		"unsigned":             keysResponse(t, "a.org", []*SigningKey{k1}, nil),
		"signed by another":    keysResponse(t, "a.org", []*SigningKey{k1}, nil, k2),
		"no keys":              keysResponse(t, "a.org", nil, nil, k1),
		"tampered after sign":  tamperedRaw,
		"not JSON":             []byte("{"),
		"valid_until_ts wrong": []byte(`{"server_name":"a.org","verify_keys":{},"valid_until_ts":"soon"}`),
	} {
		if _, err := checkServerKeys("a.org", raw, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVerifyKeyValidity(t *testing.T) {
	now := time.Now()
	current := VerifyKey{ValidUntil: now}
	old := VerifyKey{Expired: now}
	for _, tc := range []struct {
		key    VerifyKey
		at     time.Time
		strict bool
		want   bool
	}{
		{current, now.Add(-time.Hour), true, true},
		{current, now, true, true},
		{current, now.Add(time.Second), true, false},
		{current, now.Add(time.Hour), false, true},
		{old, now.Add(-time.Hour), true, true},
		{old, now, true, false},
		{old, now.Add(time.Hour), false, true},
	} {
		if got := tc.key.ValidAt(tc.at, tc.strict); got != tc.want {
			t.Errorf("%+v at %v strict=%v: %v", tc.key, tc.at.Sub(now), tc.strict, got)
		}
	}
}

// TestVerifyJSONsOwnKeys checks the gomatrixserverlib adapter against the
// server's own keys (no network, no database): an old key verifies
// signatures made before it expired under strict rules, and any time
// without.
func TestVerifyJSONsOwnKeys(t *testing.T) {
	cur, old := testKey(t, "cur"), testKey(t, "old")
	expired := time.Now().Add(-time.Hour)
	own := &ownKeys{serverName: "me.org", key: cur, old: []OldVerifyKey{{ID: old.ID, Public: old.Public(), ExpiredTS: expired.UnixMilli()}}, now: time.Now}
	k := NewKeyRing("me.org", own.verifyKeys(), nil, nil, nil)
	sign := func(key *SigningKey) []byte {
		raw, err := gomatrixserverlib.SignJSON("me.org", gomatrixserverlib.KeyID(key.ID), key.Private, []byte(`{"x":1}`))
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	before, after := spec.AsTimestamp(expired.Add(-time.Minute)), spec.AsTimestamp(expired.Add(time.Minute))
	reqs := []gomatrixserverlib.VerifyJSONRequest{
		{ServerName: "me.org", Message: sign(cur), AtTS: after, ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck},
		{ServerName: "me.org", Message: sign(old), AtTS: before, ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck},
		{ServerName: "me.org", Message: sign(old), AtTS: after, ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck},
		{ServerName: "me.org", Message: sign(old), AtTS: after, ValidityCheckingFunc: gomatrixserverlib.NoStrictValidityCheck},
		{ServerName: "me.org", Message: sign(testKey(t, "cur")), AtTS: after},
		{ServerName: "me.org", Message: []byte(`{"x":1}`), AtTS: after},
	}
	res, err := k.VerifyJSONs(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, false, true, false, false} {
		if (res[i].Error == nil) != want {
			t.Errorf("request %d: %v", i, res[i].Error)
		}
	}
	// Requests may not be signed with an old key at all.
	if err := k.verifyRequest(context.Background(), "me.org", sign(old)); err == nil {
		t.Error("request signed with an old key accepted")
	}
	if err := k.verifyRequest(context.Background(), "me.org", sign(cur)); err != nil {
		t.Error(err)
	}
}

func TestNeedsFetch(t *testing.T) {
	now := time.Now()
	fresh := &cachedResponse{validUntil: now.Add(7 * 24 * time.Hour), fetched: now.Add(-time.Hour), keyIDs: []string{"ed25519:a"}}
	half := &cachedResponse{validUntil: now.Add(time.Hour), fetched: now.Add(-2 * time.Hour), keyIDs: []string{"ed25519:a"}}
	for _, tc := range []struct {
		name   string
		cached []*cachedResponse
		c      keyCriteria
		want   bool
	}{
		{"nothing cached", nil, keyCriteria{minValid: now}, true},
		{"fresh", []*cachedResponse{fresh}, keyCriteria{minValid: now}, false},
		{"fresh, known key", []*cachedResponse{fresh}, keyCriteria{keyIDs: []string{"ed25519:a"}, minValid: now}, false},
		{"unknown key", []*cachedResponse{fresh}, keyCriteria{keyIDs: []string{"ed25519:b"}, minValid: now}, true},
		{"not valid long enough", []*cachedResponse{fresh}, keyCriteria{minValid: now.Add(8 * 24 * time.Hour)}, true},
		{"past half its life", []*cachedResponse{half}, keyCriteria{minValid: now}, true},
	} {
		if got := needsFetch(tc.cached, tc.c, now); got != tc.want {
			t.Errorf("%s: %v", tc.name, got)
		}
	}
}

func TestLoadOldVerifyKeys(t *testing.T) {
	dir := t.TempDir()
	if keys, err := LoadOldVerifyKeys(filepath.Join(dir, "absent")); err != nil || keys != nil {
		t.Fatalf("missing file: %v %v", keys, err)
	}
	pub := base64.RawStdEncoding.EncodeToString(testKey(t, "x").Public())
	path := filepath.Join(dir, OldKeysFile)
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# old keys\n\ned25519:a " + pub + " 1000\n  ed25519:b_2 " + pub + "= 2000  \n")
	keys, err := LoadOldVerifyKeys(path)
	if err != nil || len(keys) != 2 || keys[1].ID != "ed25519:b_2" || keys[1].ExpiredTS != 2000 {
		t.Fatalf("%+v %v", keys, err)
	}
	for _, bad := range []string{
		"ed25519:a " + pub,
		"ed25519:a-b " + pub + " 1000",
		"curve:a " + pub + " 1000",
		"ed25519:a AAAA 1000",
		"ed25519:a " + pub + " yesterday",
		"ed25519:a " + pub + " 0",
	} {
		write(bad)
		if _, err := LoadOldVerifyKeys(path); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
