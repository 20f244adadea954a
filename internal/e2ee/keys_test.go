package e2ee_test

import (
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

func TestUploadKeys(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newDevice(t, srv.NewUser(t, "alice", "pw"))
		const path = "/_matrix/client/v3/keys/upload"

		// An empty upload reports the counts, signed_curve25519 included.
		if counts := alice.upload(t, map[string]any{}); counts["signed_curve25519"] != 0.0 {
			t.Fatalf("empty upload: counts %v, want signed_curve25519 0", counts)
		}
		otks := alice.oneTimeKeys(t, "A", 5)
		counts := alice.upload(t, map[string]any{"device_keys": alice.deviceKeys(t), "one_time_keys": otks, "fallback_keys": alice.fallbackKey(t, "F1")})
		if counts["signed_curve25519"] != 5.0 {
			t.Fatalf("counts %v, want 5 signed_curve25519", counts)
		}
		// The same keys again change nothing.
		if counts := alice.upload(t, map[string]any{"one_time_keys": otks}); counts["signed_curve25519"] != 5.0 {
			t.Fatalf("re-upload: counts %v, want 5", counts)
		}
		s := &syncer{c: alice.Client}
		resp := s.sync(t)
		if got := dig(resp, "device_one_time_keys_count", "signed_curve25519"); got != 5.0 {
			t.Fatalf("sync device_one_time_keys_count %v, want 5", resp["device_one_time_keys_count"])
		}
		if got := stringList(resp["device_unused_fallback_key_types"]); !slices.Equal(got, []string{"signed_curve25519"}) {
			t.Fatalf("sync device_unused_fallback_key_types %v", got)
		}

		other := newDevice(t, srv.NewUser(t, "mallory", "pw"))
		noSigningKey := sign(t, map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID, "algorithms": []string{"x"},
			"keys": map[string]string{"curve25519:" + alice.DeviceID: randomKey(t)}}, alice.UserID, alice.keyID(), alice.key.priv)
		for _, c := range []struct {
			name    string
			body    any
			status  int
			errcode string
		}{
			{"not JSON", "keys", 400, "M_NOT_JSON"},
			{"device_keys not an object", map[string]any{"device_keys": "x"}, 400, "M_BAD_JSON"},
			{"another user's device keys", map[string]any{"device_keys": other.deviceKeys(t)}, 400, "M_INVALID_PARAM"},
			{"no ed25519 key", map[string]any{"device_keys": noSigningKey}, 400, "M_INVALID_PARAM"},
			{"unsigned device keys", map[string]any{"device_keys": map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID,
				"algorithms": []string{}, "keys": map[string]string{alice.keyID(): alice.key.pub}}}, 400, "M_MISSING_PARAM"},
			{"one-time key ID without algorithm", map[string]any{"one_time_keys": map[string]any{"nokeyid": "abc"}}, 400, "M_INVALID_PARAM"},
			{"one-time key of the wrong type", map[string]any{"one_time_keys": map[string]any{"curve25519:X": 5}}, 400, "M_BAD_JSON"},
			{"one-time key object without key", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:X": map[string]any{}}}, 400, "M_BAD_JSON"},
			{"one-time key ID reused with another key", map[string]any{"one_time_keys": alice.oneTimeKeys(t, "A", 1)}, 400, "M_INVALID_PARAM"},
			{"two fallback keys of one algorithm", map[string]any{"fallback_keys": map[string]any{"signed_curve25519:1": "a", "signed_curve25519:2": "b"}}, 400, "M_INVALID_PARAM"},
		} {
			wantError(t, c.name, alice.Do("POST", path, c.body), c.status, c.errcode)
		}
		// Refused uploads stored nothing.
		if counts := alice.upload(t, map[string]any{}); counts["signed_curve25519"] != 5.0 {
			t.Fatalf("after refused uploads: counts %v, want 5", counts)
		}
		// Plain curve25519 keys (strings) are counted per algorithm.
		counts = alice.upload(t, map[string]any{"one_time_keys": map[string]any{"curve25519:P1": randomKey(t)}})
		if counts["curve25519"] != 1.0 || counts["signed_curve25519"] != 5.0 {
			t.Fatalf("counts %v, want curve25519 1 and signed_curve25519 5", counts)
		}
		// Guests may upload keys.
		g, err := srv.Accounts.CreateUser(t.Context(), "guest1", "", false, true)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := srv.Accounts.NewSession(t.Context(), g.UserID, "", "", "127.0.0.1", "test", false)
		if err != nil {
			t.Fatal(err)
		}
		gc := srv.Client(t)
		gc.UserID, gc.DeviceID, gc.AccessToken = g.UserID, sess.DeviceID, sess.AccessToken
		guest := newDevice(t, gc)
		guest.upload(t, map[string]any{"device_keys": guest.deviceKeys(t)})
	})
}

func TestQueryKeys(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newDevice(t, srv.NewUser(t, "alice", "pw"))
		bob := newDevice(t, srv.NewUser(t, "bob", "pw"))
		keys := alice.deviceKeys(t)
		alice.upload(t, map[string]any{"device_keys": keys})
		const path = "/_matrix/client/v3/keys/query"

		r := bob.MustDo(200, "POST", path, map[string]any{"device_keys": map[string]any{
			alice.UserID: []string{}, "@carol:remote.example": []string{}, "@nobody:" + srv.Config.ServerName: []string{},
		}})
		got, _ := dig(r.JSON, "device_keys", alice.UserID, alice.DeviceID).(map[string]any)
		if got == nil || dig(got, "keys", alice.keyID()) != alice.key.pub || dig(got, "signatures", alice.UserID, alice.keyID()) != keys["signatures"].(map[string]any)[alice.UserID].(map[string]any)[alice.keyID()] {
			t.Fatalf("alice's device keys: %s", r.Body)
		}
		if dig(got, "unsigned", "device_display_name") != "test device" {
			t.Fatalf("unsigned.device_display_name missing: %v", got["unsigned"])
		}
		if dig(r.JSON, "failures", "remote.example") == nil {
			t.Fatalf("no failure for the unreachable server: %s", r.Body)
		}
		if m, ok := dig(r.JSON, "device_keys", "@nobody:"+srv.Config.ServerName).(map[string]any); !ok || len(m) != 0 {
			t.Fatalf("unknown local user: %s", r.Body)
		}
		// Asking for named devices returns only those that have keys.
		r = bob.MustDo(200, "POST", path, map[string]any{"device_keys": map[string]any{alice.UserID: []string{"NOSUCHDEVICE"}}})
		if m, _ := dig(r.JSON, "device_keys", alice.UserID).(map[string]any); len(m) != 0 {
			t.Fatalf("query of an unknown device: %s", r.Body)
		}
		wantError(t, "no device_keys", bob.Do("POST", path, map[string]any{}), 400, "M_MISSING_PARAM")
		wantError(t, "bad user ID", bob.Do("POST", path, map[string]any{"device_keys": map[string]any{"not-a-user": []string{}}}), 400, "M_INVALID_PARAM")
		wantError(t, "device list of the wrong type", bob.Do("POST", path, map[string]any{"device_keys": map[string]any{alice.UserID: "all"}}), 400, "M_BAD_JSON")

		// Other servers get the list without display names, with the
		// position of its last change.
		ud, err := srv.E2EE.UserDevices(t.Context(), alice.UserID)
		if err != nil || ud.StreamID == 0 || len(ud.Devices) != 1 || ud.Devices[0].DeviceID != alice.DeviceID || ud.MasterKey != nil {
			t.Fatalf("UserDevices: %+v, %v", ud, err)
		}
		if dig(mustJSON(t, ud.Devices[0].Keys), "unsigned") != nil || dig(mustJSON(t, ud.Devices[0].Keys), "keys", alice.keyID()) != alice.key.pub {
			t.Fatalf("UserDevices keys: %s", ud.Devices[0].Keys)
		}

		// Deleting the device removes its keys.
		if err := srv.Accounts.DeleteDevices(t.Context(), alice.UserID, []string{alice.DeviceID}, ""); err != nil {
			t.Fatal(err)
		}
		r = bob.MustDo(200, "POST", path, map[string]any{"device_keys": map[string]any{alice.UserID: []string{}}})
		if m, _ := dig(r.JSON, "device_keys", alice.UserID).(map[string]any); len(m) != 0 {
			t.Fatalf("keys of a deleted device: %s", r.Body)
		}
		if after, err := srv.E2EE.UserDevices(t.Context(), alice.UserID); err != nil || len(after.Devices) != 0 || after.StreamID <= ud.StreamID {
			t.Fatalf("UserDevices after the deletion: %+v, %v (before: stream %d)", after, err, ud.StreamID)
		}
	})
}

func TestClaimKeys(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newDevice(t, srv.NewUser(t, "alice", "pw"))
		bob := newDevice(t, srv.NewUser(t, "bob", "pw"))
		alice.upload(t, map[string]any{"device_keys": alice.deviceKeys(t), "one_time_keys": alice.oneTimeKeys(t, "A", 2), "fallback_keys": alice.fallbackKey(t, "F1")})
		alice.upload(t, map[string]any{"one_time_keys": alice.oneTimeKeys(t, "B", 1)})
		const path = "/_matrix/client/v3/keys/claim"
		claim := func() string {
			t.Helper()
			r := bob.MustDo(200, "POST", path, map[string]any{"one_time_keys": map[string]any{
				alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519", "NOSUCHDEVICE": "signed_curve25519"},
			}})
			got, _ := dig(r.JSON, "one_time_keys", alice.UserID, alice.DeviceID).(map[string]any)
			if len(got) != 1 {
				t.Fatalf("claim: %s", r.Body)
			}
			if dig(r.JSON, "one_time_keys", alice.UserID, "NOSUCHDEVICE") != nil {
				t.Fatalf("claim returned a key for an unknown device: %s", r.Body)
			}
			for id := range got {
				return id
			}
			return ""
		}
		// One-time keys in upload order, then the fallback key, again and again.
		var ids []string
		for range 5 {
			ids = append(ids, claim())
		}
		want := []string{"signed_curve25519:A0", "signed_curve25519:A1", "signed_curve25519:B0", "signed_curve25519:F1", "signed_curve25519:F1"}
		if !slices.Equal(ids, want) {
			t.Fatalf("claimed %v, want %v", ids, want)
		}
		s := &syncer{c: alice.Client}
		resp := s.sync(t)
		if dig(resp, "device_one_time_keys_count", "signed_curve25519") != 0.0 || len(stringList(resp["device_unused_fallback_key_types"])) != 0 {
			t.Fatalf("after the claims: counts %v, unused fallback %v", resp["device_one_time_keys_count"], resp["device_unused_fallback_key_types"])
		}
		if _, ok := resp["device_unused_fallback_key_types"].([]any); !ok {
			t.Fatalf("device_unused_fallback_key_types is required, even empty: %v", resp)
		}
		// A new fallback key is unused again; the same one keeps its state.
		alice.upload(t, map[string]any{"fallback_keys": alice.fallbackKey(t, "F2")})
		if got := stringList(s.sync(t)["device_unused_fallback_key_types"]); !slices.Equal(got, []string{"signed_curve25519"}) {
			t.Fatalf("after a new fallback key: %v", got)
		}

		r := bob.MustDo(200, "POST", path, map[string]any{"one_time_keys": map[string]any{"@carol:remote.example": map[string]string{"D": "signed_curve25519"}}})
		if dig(r.JSON, "failures", "remote.example") == nil {
			t.Fatalf("no failure for the unreachable server: %s", r.Body)
		}
		wantError(t, "no one_time_keys", bob.Do("POST", path, map[string]any{}), 400, "M_MISSING_PARAM")
		wantError(t, "bad user ID", bob.Do("POST", path, map[string]any{"one_time_keys": map[string]any{"bob": map[string]string{}}}), 400, "M_INVALID_PARAM")
		wantError(t, "algorithm of the wrong type", bob.Do("POST", path, map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]any{"D": 1}}}), 400, "M_BAD_JSON")
	})
}
