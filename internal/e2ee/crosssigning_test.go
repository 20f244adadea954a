package e2ee_test

import (
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

const (
	signingUploadPath    = "/_matrix/client/v3/keys/device_signing/upload"
	signaturesUploadPath = "/_matrix/client/v3/keys/signatures/upload"
)

// crossSigning is a user's set of cross-signing keys.
type crossSigning struct {
	master, selfSigning, userSigning keyPair
}

func newCrossSigning(t testing.TB) *crossSigning {
	return &crossSigning{master: newKeyPair(t), selfSigning: newKeyPair(t), userSigning: newKeyPair(t)}
}

// body is the /keys/device_signing/upload body for userID.
func (cs *crossSigning) body(t testing.TB, userID string) map[string]any {
	return map[string]any{
		"master_key":       crossSigningKey(t, userID, "master", cs.master, nil),
		"self_signing_key": crossSigningKey(t, userID, "self_signing", cs.selfSigning, &cs.master),
		"user_signing_key": crossSigningKey(t, userID, "user_signing", cs.userSigning, &cs.master),
	}
}

// query returns requester's /keys/query answer about users.
func query(t testing.TB, requester *testutil.Client, users ...string) map[string]any {
	t.Helper()
	q := map[string]any{}
	for _, u := range users {
		q[u] = []string{}
	}
	return requester.MustDo(200, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": q}).JSON
}

func TestDeviceSigningUpload(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newDevice(t, srv.NewUser(t, "alice", "alice-pw"))
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice.Client, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		bs := &syncer{c: bob}
		bs.sync(t)

		cs := newCrossSigning(t)
		// The first upload needs no authentication.
		alice.MustDo(200, "POST", signingUploadPath, cs.body(t, alice.UserID))
		if changed, _ := deviceLists(bs.sync(t)); !slices.Equal(changed, []string{alice.UserID}) {
			t.Fatalf("bob after alice's cross-signing upload: changed %v", changed)
		}
		r := query(t, bob, alice.UserID)
		if dig(r, "master_keys", alice.UserID, "keys", "ed25519:"+cs.master.pub) != cs.master.pub ||
			dig(r, "self_signing_keys", alice.UserID, "keys", "ed25519:"+cs.selfSigning.pub) != cs.selfSigning.pub {
			t.Fatalf("bob's query misses alice's master or self-signing key: %v", r)
		}
		if dig(r, "user_signing_keys", alice.UserID) != nil {
			t.Fatalf("bob sees alice's user-signing key: %v", r["user_signing_keys"])
		}
		if dig(query(t, alice.Client, alice.UserID), "user_signing_keys", alice.UserID, "keys", "ed25519:"+cs.userSigning.pub) == nil {
			t.Fatal("alice does not see her own user-signing key")
		}
		// The same keys again: idempotent, no authentication.
		alice.MustDo(200, "POST", signingUploadPath, cs.body(t, alice.UserID))

		// New keys replace the old ones only with the password.
		cs2 := newCrossSigning(t)
		body := cs2.body(t, alice.UserID)
		r0 := alice.Do("POST", signingUploadPath, body)
		uiaSession, _ := r0.JSON["session"].(string)
		if r0.Status != 401 || uiaSession == "" || !slices.Contains(stringList(dig(r0.JSON, "flows").([]any)[0].(map[string]any)["stages"]), "m.login.password") {
			t.Fatalf("replacing keys without auth: %d %s", r0.Status, r0.Body)
		}
		body["auth"] = map[string]any{"type": "m.login.password", "session": uiaSession, "password": "wrong",
			"identifier": map[string]any{"type": "m.id.user", "user": alice.UserID}}
		wantError(t, "wrong password", alice.Do("POST", signingUploadPath, body), 401, "M_FORBIDDEN")
		body["auth"].(map[string]any)["password"] = "alice-pw"
		alice.MustDo(200, "POST", signingUploadPath, body)
		if dig(query(t, bob, alice.UserID), "master_keys", alice.UserID, "keys", "ed25519:"+cs2.master.pub) == nil {
			t.Fatal("the replaced master key is not served")
		}

		carol := srv.NewUser(t, "carol", "pw")
		other := newKeyPair(t)
		ccs := newCrossSigning(t)
		badSSK := ccs.body(t, carol.UserID)
		badSSK["self_signing_key"] = crossSigningKey(t, carol.UserID, "self_signing", ccs.selfSigning, &other)
		twoKeys := crossSigningKey(t, carol.UserID, "master", ccs.master, nil)
		twoKeys["keys"] = map[string]string{"ed25519:" + ccs.master.pub: ccs.master.pub, "ed25519:" + other.pub: other.pub}
		mismatched := crossSigningKey(t, carol.UserID, "master", ccs.master, nil)
		mismatched["keys"] = map[string]string{"ed25519:" + ccs.master.pub: other.pub}
		for _, c := range []struct {
			name    string
			body    any
			status  int
			errcode string
		}{
			{"self-signing key without a master key", map[string]any{"self_signing_key": crossSigningKey(t, carol.UserID, "self_signing", ccs.selfSigning, &ccs.master)}, 400, "M_MISSING_PARAM"},
			{"self-signing key not signed by the master key", badSSK, 400, "M_INVALID_SIGNATURE"},
			{"someone else's master key", map[string]any{"master_key": crossSigningKey(t, alice.UserID, "master", ccs.master, nil)}, 400, "M_INVALID_PARAM"},
			{"master key with the wrong usage", map[string]any{"master_key": crossSigningKey(t, carol.UserID, "self_signing", ccs.master, nil)}, 400, "M_INVALID_PARAM"},
			{"master key with two keys", map[string]any{"master_key": twoKeys}, 400, "M_INVALID_PARAM"},
			{"key name and value differ", map[string]any{"master_key": mismatched}, 400, "M_INVALID_PARAM"},
			{"master key not an object", map[string]any{"master_key": []string{}}, 400, "M_BAD_JSON"},
		} {
			wantError(t, c.name, carol.Do("POST", signingUploadPath, c.body), c.status, c.errcode)
		}
		// A cross-signing key may not share its public key with a device ID.
		dave := srv.NewUser(t, "dave", "pw")
		dcs := newCrossSigning(t)
		session(t, srv, dave.UserID, dcs.master.pub)
		wantError(t, "key in use as a device ID", dave.Do("POST", signingUploadPath, dcs.body(t, dave.UserID)), 403, "M_FORBIDDEN")
	})
}

func TestSignaturesUpload(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice1 := newDevice(t, srv.NewUser(t, "alice", "pw"))
		alice2 := newDevice(t, session(t, srv, alice1.UserID, "ALICE2"))
		bob := newDevice(t, srv.NewUser(t, "bob", "pw"))
		carol := srv.NewUser(t, "carol", "pw")
		a2keys := alice2.deviceKeys(t)
		alice1.upload(t, map[string]any{"device_keys": alice1.deviceKeys(t)})
		alice2.upload(t, map[string]any{"device_keys": a2keys})
		acs, bcs := newCrossSigning(t), newCrossSigning(t)
		alice1.MustDo(200, "POST", signingUploadPath, acs.body(t, alice1.UserID))
		bob.MustDo(200, "POST", signingUploadPath, bcs.body(t, bob.UserID))
		roomID := createRoom(t, alice1.Client, map[string]any{"preset": "public_chat"})
		join(t, bob.Client, roomID)
		bs := &syncer{c: bob.Client}
		bs.sync(t)

		sskID, uskID := "ed25519:"+acs.selfSigning.pub, "ed25519:"+acs.userSigning.pub
		signedDevice := sign(t, a2keys, alice1.UserID, sskID, acs.selfSigning.priv)
		aliceMaster := crossSigningKey(t, alice1.UserID, "master", acs.master, nil)
		masterByDevice := sign(t, aliceMaster, alice1.UserID, alice1.keyID(), alice1.key.priv)
		bobMaster := crossSigningKey(t, bob.UserID, "master", bcs.master, nil)
		bobByAlice := sign(t, bobMaster, alice1.UserID, uskID, acs.userSigning.priv)
		r := alice1.MustDo(200, "POST", signaturesUploadPath, map[string]any{
			alice1.UserID: map[string]any{"ALICE2": signedDevice, acs.master.pub: masterByDevice},
			bob.UserID:    map[string]any{bcs.master.pub: bobByAlice},
		})
		if f, _ := r.JSON["failures"].(map[string]any); len(f) != 0 {
			t.Fatalf("failures: %s", r.Body)
		}
		// Bob learns that alice's devices changed, and sees the
		// self-signing key's signature on her second device and her
		// device's signature on her master key.
		if changed, _ := deviceLists(bs.sync(t)); !slices.Contains(changed, alice1.UserID) {
			t.Fatalf("bob after alice signed her device: changed %v", changed)
		}
		q := query(t, bob.Client, alice1.UserID, bob.UserID)
		if dig(q, "device_keys", alice1.UserID, "ALICE2", "signatures", alice1.UserID, sskID) == nil {
			t.Fatalf("no self-signing signature on ALICE2: %v", dig(q, "device_keys", alice1.UserID, "ALICE2"))
		}
		if dig(q, "master_keys", alice1.UserID, "signatures", alice1.UserID, alice1.keyID()) == nil {
			t.Fatalf("no device signature on alice's master key: %v", dig(q, "master_keys", alice1.UserID))
		}
		// Alice's user-signing signature on bob's key is hers alone.
		if dig(q, "master_keys", bob.UserID, "signatures", alice1.UserID) != nil {
			t.Fatal("bob sees alice's user-signing signature")
		}
		if dig(query(t, carol, bob.UserID), "master_keys", bob.UserID, "signatures", alice1.UserID) != nil {
			t.Fatal("carol sees alice's user-signing signature")
		}
		if dig(query(t, alice1.Client, bob.UserID), "master_keys", bob.UserID, "signatures", alice1.UserID, uskID) == nil {
			t.Fatal("alice does not see her signature on bob's master key")
		}

		// Per-key failures.
		other := newKeyPair(t)
		forged := sign(t, a2keys, alice1.UserID, sskID, other.priv)
		changedKeys := sign(t, alice1.deviceKeys(t), alice1.UserID, sskID, acs.selfSigning.priv)
		changedKeys["device_id"] = "ALICE2"
		r = alice1.MustDo(200, "POST", signaturesUploadPath, map[string]any{
			alice1.UserID: map[string]any{"ALICE2": forged, "NOSUCHDEVICE": signedDevice, alice1.DeviceID: changedKeys},
			carol.UserID:  map[string]any{"somekey": map[string]any{}},
			"not-a-user":  map[string]any{"x": map[string]any{}},
		})
		for _, c := range []struct{ user, key, errcode string }{
			{alice1.UserID, "ALICE2", "M_INVALID_SIGNATURE"},
			{alice1.UserID, "NOSUCHDEVICE", "M_NOT_FOUND"},
			{alice1.UserID, alice1.DeviceID, "M_INVALID_PARAM"},
			{carol.UserID, "somekey", "M_NOT_FOUND"},
			{"not-a-user", "x", "M_INVALID_PARAM"},
		} {
			if got := dig(r.JSON, "failures", c.user, c.key, "errcode"); got != c.errcode {
				t.Errorf("failure for %s %s: %v, want %s (%s)", c.user, c.key, got, c.errcode, r.Body)
			}
		}
		wantError(t, "not an object", alice1.Do("POST", signaturesUploadPath, []int{1}), 400, "M_BAD_JSON")

		// The same device keys signed again keep the cross-signatures; new
		// identity keys drop them and are a device-list change.
		bs.sync(t)
		alice2.upload(t, map[string]any{"device_keys": sign(t, a2keys, alice1.UserID, "ed25519:other", newKeyPair(t).priv)})
		if dig(query(t, bob.Client, alice1.UserID), "device_keys", alice1.UserID, "ALICE2", "signatures", alice1.UserID, sskID) == nil {
			t.Fatal("re-signing the same keys dropped the cross-signature")
		}
		if changed, _ := deviceLists(bs.sync(t)); len(changed) != 0 {
			t.Fatalf("re-signing the same keys is a change: %v", changed)
		}
		alice2.key = newKeyPair(t)
		alice2.upload(t, map[string]any{"device_keys": alice2.deviceKeys(t)})
		if dig(query(t, bob.Client, alice1.UserID), "device_keys", alice1.UserID, "ALICE2", "signatures", alice1.UserID, sskID) != nil {
			t.Fatal("new device keys kept the old keys' cross-signature")
		}
		if changed, _ := deviceLists(bs.sync(t)); !slices.Equal(changed, []string{alice1.UserID}) {
			t.Fatalf("bob after alice's device got new keys: changed %v", changed)
		}
	})
}
