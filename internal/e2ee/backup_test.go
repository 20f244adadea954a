package e2ee_test

import (
	"net/url"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

const backupAlgorithm = "m.megolm_backup.v1.curve25519-aes-sha2"

// backupKey is a KeyBackupData with the given metadata; data marks its
// session_data so that a test can tell which key is stored.
func backupKey(verified bool, firstIndex, forwarded int, data string) map[string]any {
	return map[string]any{"first_message_index": firstIndex, "forwarded_count": forwarded, "is_verified": verified,
		"session_data": map[string]any{"ciphertext": data, "ephemeral": "e", "mac": "m"}}
}

func TestKeyBackupVersions(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		const path = "/_matrix/client/v3/room_keys/version"

		wantError(t, "no backup yet", alice.Do("GET", path, nil), 404, "M_NOT_FOUND")
		authData := map[string]any{"public_key": "abcdefg", "signatures": map[string]any{}}
		v1 := alice.MustDo(200, "POST", path, map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}).JSON["version"]
		r := alice.MustDo(200, "GET", path, nil)
		if r.JSON["version"] != v1 || r.JSON["algorithm"] != backupAlgorithm || dig(r.JSON, "auth_data", "public_key") != "abcdefg" ||
			r.JSON["count"] != 0.0 || r.JSON["etag"] == nil {
			t.Fatalf("current version: %s", r.Body)
		}
		if r2 := alice.MustDo(200, "GET", path+"/"+v1.(string), nil); string(r2.Body) != string(r.Body) {
			t.Fatalf("version by number %s differs from current %s", r2.Body, r.Body)
		}
		wantError(t, "another user's backup", bob.Do("GET", path, nil), 404, "M_NOT_FOUND")
		wantError(t, "another user's version", bob.Do("GET", path+"/"+v1.(string), nil), 404, "M_NOT_FOUND")

		// Only auth_data changes, with the same algorithm.
		authData["public_key"] = "hijklmn"
		alice.MustDo(200, "PUT", path+"/"+v1.(string), map[string]any{"algorithm": backupAlgorithm, "auth_data": authData, "version": v1})
		if got := dig(alice.MustDo(200, "GET", path, nil).JSON, "auth_data", "public_key"); got != "hijklmn" {
			t.Fatalf("auth_data after update: %v", got)
		}
		wantError(t, "other algorithm", alice.Do("PUT", path+"/"+v1.(string), map[string]any{"algorithm": "other", "auth_data": authData}), 400, "M_INVALID_PARAM")
		wantError(t, "version mismatch", alice.Do("PUT", path+"/"+v1.(string), map[string]any{"algorithm": backupAlgorithm, "auth_data": authData, "version": "77"}), 400, "M_INVALID_PARAM")
		wantError(t, "update of an unknown version", alice.Do("PUT", path+"/77", map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}), 404, "M_NOT_FOUND")
		wantError(t, "no auth_data", alice.Do("POST", path, map[string]any{"algorithm": backupAlgorithm}), 400, "M_MISSING_PARAM")
		wantError(t, "auth_data not an object", alice.Do("POST", path, map[string]any{"algorithm": backupAlgorithm, "auth_data": "x"}), 400, "M_BAD_JSON")
		wantError(t, "not a version number", alice.Do("GET", path+"/abc", nil), 404, "M_NOT_FOUND")

		// A new version becomes current; deleting it makes the previous
		// one current again, and deleting twice is fine.
		v2 := alice.MustDo(200, "POST", path, map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}).JSON["version"]
		if v2 == v1 || alice.MustDo(200, "GET", path, nil).JSON["version"] != v2 {
			t.Fatalf("version 2 %v is not current", v2)
		}
		alice.MustDo(200, "DELETE", path+"/"+v2.(string), nil)
		alice.MustDo(200, "DELETE", path+"/"+v2.(string), nil)
		wantError(t, "deleted version", alice.Do("GET", path+"/"+v2.(string), nil), 404, "M_NOT_FOUND")
		wantError(t, "delete of an unknown version", alice.Do("DELETE", path+"/77", nil), 404, "M_NOT_FOUND")
		if got := alice.MustDo(200, "GET", path, nil).JSON["version"]; got != v1 {
			t.Fatalf("current version after deleting %v: %v, want %v", v2, got, v1)
		}
		// Numbers are never reused.
		if v3 := alice.MustDo(200, "POST", path, map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}).JSON["version"]; v3 == v1 || v3 == v2 {
			t.Fatalf("version number %v reused", v3)
		}
	})
}

func TestKeyBackupKeys(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		const vpath = "/_matrix/client/v3/room_keys/version"
		authData := map[string]any{"public_key": "abcdefg"}
		v1 := alice.MustDo(200, "POST", vpath, map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}).JSON["version"].(string)
		room1, room2 := "!one:"+srv.Config.ServerName, "!two:"+srv.Config.ServerName
		keys := "/_matrix/client/v3/room_keys/keys"
		sessionPath := keys + "/" + url.PathEscape(room1) + "/sess1?version=" + v1
		etag := ""
		put := func(key map[string]any, wantChange bool, wantCount float64) {
			t.Helper()
			r := alice.MustDo(200, "PUT", sessionPath, key)
			if got := r.JSON["etag"].(string); (got != etag) != wantChange {
				t.Fatalf("PUT %v: etag %s → %s, want changed=%v", key, etag, got, wantChange)
			}
			if r.JSON["count"] != wantCount {
				t.Fatalf("PUT %v: count %v, want %v", key, r.JSON["count"], wantCount)
			}
			etag = r.JSON["etag"].(string)
		}
		stored := func() string {
			t.Helper()
			return dig(alice.MustDo(200, "GET", sessionPath, nil).JSON, "session_data", "ciphertext").(string)
		}
		put(backupKey(false, 5, 1, "a"), true, 1)
		// The spec's rules: verified beats unverified, then the lower first
		// message index, then the lower forwarded count; else keep.
		for _, c := range []struct {
			key     map[string]any
			replace bool
			want    string
		}{
			{backupKey(false, 6, 0, "worse index"), false, "a"},
			{backupKey(false, 3, 5, "better index"), true, "better index"},
			{backupKey(true, 10, 2, "verified"), true, "verified"},
			{backupKey(false, 0, 0, "unverified"), false, "verified"},
			{backupKey(true, 10, 1, "fewer forwards"), true, "fewer forwards"},
			{backupKey(true, 10, 1, "equal"), false, "fewer forwards"},
		} {
			put(c.key, c.replace, 1)
			if got := stored(); got != c.want {
				t.Fatalf("after %v: stored %q, want %q", c.key, got, c.want)
			}
		}
		if got := alice.MustDo(200, "GET", vpath, nil).JSON["etag"]; got != etag {
			t.Fatalf("version etag %v, want %v", got, etag)
		}

		// Room and whole-backup variants.
		alice.MustDo(200, "PUT", keys+"/"+url.PathEscape(room1)+"?version="+v1, map[string]any{"sessions": map[string]any{"sess2": backupKey(false, 0, 0, "s2")}})
		r := alice.MustDo(200, "PUT", keys+"?version="+v1, map[string]any{"rooms": map[string]any{room2: map[string]any{"sessions": map[string]any{"sess3": backupKey(false, 0, 0, "s3")}}}})
		if r.JSON["count"] != 3.0 {
			t.Fatalf("count after three sessions: %s", r.Body)
		}
		all := alice.MustDo(200, "GET", keys+"?version="+v1, nil).JSON
		if dig(all, "rooms", room1, "sessions", "sess2", "session_data", "ciphertext") != "s2" || dig(all, "rooms", room2, "sessions", "sess3", "first_message_index") != 0.0 {
			t.Fatalf("all keys: %v", all)
		}
		if s, _ := dig(alice.MustDo(200, "GET", keys+"/"+url.PathEscape(room1)+"?version="+v1, nil).JSON, "sessions").(map[string]any); len(s) != 2 {
			t.Fatalf("room keys: %v", s)
		}
		empty := alice.MustDo(200, "GET", keys+"/"+url.PathEscape("!none:"+srv.Config.ServerName)+"?version="+v1, nil)
		if s, ok := empty.JSON["sessions"].(map[string]any); !ok || len(s) != 0 {
			t.Fatalf("keys of a room without any: %s", empty.Body)
		}
		wantError(t, "unknown session", alice.Do("GET", keys+"/"+url.PathEscape(room1)+"/nosuch?version="+v1, nil), 404, "M_NOT_FOUND")

		// Keys go to the current version only.
		v2 := alice.MustDo(200, "POST", vpath, map[string]any{"algorithm": backupAlgorithm, "auth_data": authData}).JSON["version"].(string)
		r = alice.Do("PUT", sessionPath, backupKey(true, 0, 0, "x"))
		wantError(t, "write to an old version", r, 403, "M_WRONG_ROOM_KEYS_VERSION")
		if r.JSON["current_version"] != v2 {
			t.Fatalf("current_version %v, want %v", r.JSON["current_version"], v2)
		}
		wantError(t, "write to an unknown version", alice.Do("PUT", keys+"/"+url.PathEscape(room1)+"/sess1?version=77", backupKey(true, 0, 0, "x")), 404, "M_NOT_FOUND")
		if got := stored(); got != "fewer forwards" {
			t.Fatalf("the old version's keys are readable: %q", got)
		}

		// Deleting keys: session, room, everything.
		for _, c := range []struct {
			path  string
			count float64
		}{
			{keys + "/" + url.PathEscape(room1) + "/sess1?version=" + v1, 2},
			{keys + "/" + url.PathEscape(room1) + "?version=" + v1, 1},
			{keys + "?version=" + v1, 0},
		} {
			r := alice.MustDo(200, "DELETE", c.path, nil)
			if r.JSON["count"] != c.count || r.JSON["etag"] == etag {
				t.Fatalf("DELETE %s: %s, want count %v and a new etag", c.path, r.Body, c.count)
			}
			etag = r.JSON["etag"].(string)
		}

		for _, c := range []struct {
			name, method, path string
			body               any
			status             int
			errcode            string
		}{
			{"no version", "GET", keys, nil, 400, "M_MISSING_PARAM"},
			{"no version on PUT", "PUT", keys, map[string]any{"rooms": map[string]any{}}, 400, "M_MISSING_PARAM"},
			{"bad room ID", "GET", keys + "/not-a-room?version=" + v2, nil, 400, "M_INVALID_PARAM"},
			{"missing fields", "PUT", keys + "/" + url.PathEscape(room1) + "/s?version=" + v2, map[string]any{"is_verified": true}, 400, "M_MISSING_PARAM"},
			{"session_data not an object", "PUT", keys + "/" + url.PathEscape(room1) + "/s?version=" + v2,
				map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": true, "session_data": 1}, 400, "M_BAD_JSON"},
			{"no rooms", "PUT", keys + "?version=" + v2, map[string]any{}, 400, "M_MISSING_PARAM"},
			{"no sessions", "PUT", keys + "/" + url.PathEscape(room1) + "?version=" + v2, map[string]any{}, 400, "M_MISSING_PARAM"},
			{"bad room ID in rooms", "PUT", keys + "?version=" + v2, map[string]any{"rooms": map[string]any{"x": map[string]any{"sessions": map[string]any{}}}}, 400, "M_INVALID_PARAM"},
			{"keys of a deleted version", "GET", keys + "?version=77", nil, 404, "M_NOT_FOUND"},
		} {
			wantError(t, c.name, alice.Do(c.method, c.path, c.body), c.status, c.errcode)
		}
	})
}
