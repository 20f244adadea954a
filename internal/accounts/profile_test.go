package accounts_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// expectMatrixErr fails the test unless r is the given Matrix error.
func expectMatrixErr(t *testing.T, what string, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Errorf("%s: got %d %s, want %d %s", what, r.Status, r.Body, status, errcode)
	}
}

// profileURL is the client API path of a user's profile, or of one field.
func profileURL(userID string, key ...string) string {
	p := "/_matrix/client/v3/profile/" + url.PathEscape(userID)
	for _, k := range key {
		p += "/" + url.PathEscape(k)
	}
	return p
}

// newGuest creates a guest account and logs it in.
func newGuest(t *testing.T, srv *testutil.Server, localpart string) *testutil.Client {
	t.Helper()
	ctx := context.Background()
	u, err := srv.Accounts.CreateUser(ctx, localpart, "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.Accounts.NewSession(ctx, u.UserID, "", "guest device", "127.0.0.1", "test", false)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	c.UserID, c.DeviceID, c.AccessToken = u.UserID, sess.DeviceID, sess.AccessToken
	return c
}

func TestProfileDisplaynameAndAvatar(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		var mu sync.Mutex
		var changed []string
		srv.Accounts.Hooks.ProfileChanged = func(_ context.Context, userID string) {
			mu.Lock()
			defer mu.Unlock()
			changed = append(changed, userID)
		}
		alice := srv.NewUser(t, "alice", "secret")
		anon := srv.Client(t)

		// A new account's display name is its localpart; no avatar.
		r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil)
		if r.JSON["displayname"] != "alice" || r.JSON["avatar_url"] != nil || len(r.JSON) != 1 {
			t.Errorf("fresh profile: %s", r.Body)
		}
		expectMatrixErr(t, "unset avatar", anon.Do("GET", profileURL(alice.UserID, "avatar_url"), nil), 404, "M_NOT_FOUND")

		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "displayname"), map[string]any{"displayname": "  Alice W.  "})
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "avatar_url"), map[string]any{"avatar_url": "mxc://example.org/abc123"})
		// Readable without a token, through v3 and r0 paths.
		if r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID, "displayname"), nil); r.JSON["displayname"] != "Alice W." || len(r.JSON) != 1 {
			t.Errorf("displayname: %s", r.Body)
		}
		r0 := strings.Replace(profileURL(alice.UserID, "avatar_url"), "/v3/", "/r0/", 1)
		if r := anon.MustDo(http.StatusOK, "GET", r0, nil); r.JSON["avatar_url"] != "mxc://example.org/abc123" {
			t.Errorf("avatar_url: %s", r.Body)
		}
		r = anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil)
		if r.JSON["displayname"] != "Alice W." || r.JSON["avatar_url"] != "mxc://example.org/abc123" {
			t.Errorf("profile: %s", r.Body)
		}
		dn, av, err := srv.Accounts.GetProfile(context.Background(), alice.UserID)
		if err != nil || dn == nil || *dn != "Alice W." || av == nil || *av != "mxc://example.org/abc123" {
			t.Errorf("GetProfile: %v %v %v", dn, av, err)
		}

		// An empty string clears the field; so does DELETE.
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "displayname"), map[string]any{"displayname": ""})
		expectMatrixErr(t, "cleared displayname", anon.Do("GET", profileURL(alice.UserID, "displayname"), nil), 404, "M_NOT_FOUND")
		alice.MustDo(http.StatusOK, "DELETE", profileURL(alice.UserID, "avatar_url"), nil)
		if r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil); len(r.JSON) != 0 {
			t.Errorf("profile after clearing: %s", r.Body)
		}
		dn, av, err = srv.Accounts.GetProfile(context.Background(), alice.UserID)
		if err != nil || dn != nil || av != nil {
			t.Errorf("GetProfile after clearing: %v %v %v", dn, av, err)
		}

		mu.Lock()
		if len(changed) != 4 || changed[0] != alice.UserID {
			t.Errorf("ProfileChanged calls: %v", changed)
		}
		mu.Unlock()
		if _, _, err := srv.Accounts.GetProfile(context.Background(), "@nobody:"+srv.Config.ServerName); !strings.Contains(err.Error(), "M_NOT_FOUND") {
			t.Errorf("GetProfile of unknown user: %v", err)
		}
	})
}

func TestProfileCustomFields(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		calls := 0
		srv.Accounts.Hooks.ProfileChanged = func(context.Context, string) { calls++ }
		alice := srv.NewUser(t, "alice", "secret")
		anon := srv.Client(t)

		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "m.tz"), map[string]any{"m.tz": "Europe/London"})
		custom := map[string]any{"nested": []any{1.0, "two", nil}}
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "com.example.info"), map[string]any{"com.example.info": custom})
		// Null is stored, not taken as a deletion.
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "com.example.nothing"), `{"com.example.nothing": null}`)

		r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID, "com.example.info"), nil)
		got, _ := json.Marshal(r.JSON["com.example.info"])
		if string(got) != `{"nested":[1,"two",null]}` {
			t.Errorf("custom field: %s", r.Body)
		}
		if r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID, "com.example.nothing"), nil); string(r.Body) != `{"com.example.nothing":null}` {
			t.Errorf("null field: %s", r.Body)
		}
		r = anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil)
		if r.JSON["m.tz"] != "Europe/London" || r.JSON["displayname"] != "alice" || r.JSON["com.example.info"] == nil || len(r.JSON) != 4 {
			t.Errorf("whole profile: %s", r.Body)
		}

		alice.MustDo(http.StatusOK, "DELETE", profileURL(alice.UserID, "com.example.info"), nil)
		expectMatrixErr(t, "deleted field", anon.Do("GET", profileURL(alice.UserID, "com.example.info"), nil), 404, "M_NOT_FOUND")
		// Deleting a field that is not set succeeds.
		alice.MustDo(http.StatusOK, "DELETE", profileURL(alice.UserID, "com.example.info"), nil)
		if r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID, "displayname"), nil); r.JSON["displayname"] != "alice" {
			t.Errorf("displayname survives custom changes: %s", r.Body)
		}
		if calls != 0 {
			t.Errorf("ProfileChanged ran %d times for custom fields", calls)
		}

		// The whole profile must stay under 64 KiB.
		big := strings.Repeat("x", 40*1024)
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "com.example.big"), map[string]any{"com.example.big": big})
		expectMatrixErr(t, "profile over 64 KiB",
			alice.Do("PUT", profileURL(alice.UserID, "com.example.big2"), map[string]any{"com.example.big2": big}), 400, "M_PROFILE_TOO_LARGE")
		expectMatrixErr(t, "refused field not stored", anon.Do("GET", profileURL(alice.UserID, "com.example.big2"), nil), 404, "M_NOT_FOUND")
		// Replacing the big field by a small one is fine.
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "com.example.big"), map[string]any{"com.example.big": "small"})
		alice.MustDo(http.StatusOK, "PUT", profileURL(alice.UserID, "com.example.big2"), map[string]any{"com.example.big2": big})
	})
}

func TestProfileErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		anon := srv.Client(t)
		badToken := srv.Client(t)
		badToken.AccessToken = "nope"
		dn := profileURL(alice.UserID, "displayname")

		cases := []struct {
			name    string
			c       *testutil.Client
			method  string
			path    string
			body    any
			status  int
			errcode string
		}{
			{"no token", anon, "PUT", dn, map[string]any{"displayname": "x"}, 401, "M_MISSING_TOKEN"},
			{"bad token", badToken, "PUT", dn, map[string]any{"displayname": "x"}, 401, "M_UNKNOWN_TOKEN"},
			{"someone else's displayname", bob, "PUT", dn, map[string]any{"displayname": "x"}, 403, "M_FORBIDDEN"},
			{"someone else's field", bob, "DELETE", profileURL(alice.UserID, "m.tz"), nil, 403, "M_FORBIDDEN"},
			{"displayname not a string", alice, "PUT", dn, map[string]any{"displayname": 5}, 400, "M_INVALID_PARAM"},
			{"displayname null", alice, "PUT", dn, `{"displayname": null}`, 400, "M_INVALID_PARAM"},
			{"displayname too long", alice, "PUT", dn, map[string]any{"displayname": strings.Repeat("é", 257)}, 400, "M_INVALID_PARAM"},
			{"avatar not a string", alice, "PUT", profileURL(alice.UserID, "avatar_url"), map[string]any{"avatar_url": []string{"mxc://a/b"}}, 400, "M_INVALID_PARAM"},
			{"m.tz not a string", alice, "PUT", profileURL(alice.UserID, "m.tz"), map[string]any{"m.tz": 1}, 400, "M_INVALID_PARAM"},
			{"key missing from body", alice, "PUT", dn, map[string]any{"avatar_url": "mxc://a/b"}, 400, "M_MISSING_PARAM"},
			{"body not JSON", alice, "PUT", dn, "{displayname", 400, "M_NOT_JSON"},
			{"empty body", alice, "PUT", dn, "", 400, "M_NOT_JSON"},
			{"body not an object", alice, "PUT", dn, `["displayname"]`, 400, "M_BAD_JSON"},
			{"key without namespace", alice, "PUT", profileURL(alice.UserID, "nickname"), map[string]any{"nickname": "x"}, 400, "M_INVALID_PARAM"},
			{"key with capitals", alice, "PUT", profileURL(alice.UserID, "com.Example.x"), map[string]any{"com.Example.x": "x"}, 400, "M_INVALID_PARAM"},
			{"key too long", alice, "PUT", profileURL(alice.UserID, "com.example."+strings.Repeat("k", 250)), map[string]any{}, 400, "M_KEY_TOO_LARGE"},
			{"bad key on GET", anon, "GET", profileURL(alice.UserID, "Bad"), nil, 400, "M_INVALID_PARAM"},
			{"bad key on DELETE", alice, "DELETE", profileURL(alice.UserID, "bad key"), nil, 400, "M_INVALID_PARAM"},
			{"unknown local user", anon, "GET", profileURL("@nobody:" + srv.Config.ServerName), nil, 404, "M_NOT_FOUND"},
			{"unknown local user's field", anon, "GET", profileURL("@nobody:"+srv.Config.ServerName, "displayname"), nil, 404, "M_NOT_FOUND"},
			// Asked over federation; remote.example never resolves.
			{"remote user, server unreachable", anon, "GET", profileURL("@alice:remote.example"), nil, 502, "M_UNKNOWN"},
			{"not a user ID", anon, "GET", profileURL("alice"), nil, 400, "M_INVALID_PARAM"},
			{"user ID without server", anon, "GET", profileURL("@alice"), nil, 400, "M_INVALID_PARAM"},
			{"wrong method", alice, "POST", dn, map[string]any{"displayname": "x"}, 405, "M_UNRECOGNIZED"},
		}
		for _, tc := range cases {
			expectMatrixErr(t, tc.name, tc.c.Do(tc.method, tc.path, tc.body), tc.status, tc.errcode)
		}
		// Nothing above changed alice's profile.
		r := anon.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil)
		if string(r.Body) != `{"displayname":"alice"}` {
			t.Errorf("profile after refused changes: %s", r.Body)
		}
	})
}

func TestProfileGuest(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		guest := newGuest(t, srv, "guest1")
		guest.MustDo(http.StatusOK, "PUT", profileURL(guest.UserID, "displayname"), map[string]any{"displayname": "Visitor"})
		if r := srv.Client(t).MustDo(http.StatusOK, "GET", profileURL(guest.UserID, "displayname"), nil); r.JSON["displayname"] != "Visitor" {
			t.Errorf("guest displayname: %s", r.Body)
		}
		expectMatrixErr(t, "guest avatar",
			guest.Do("PUT", profileURL(guest.UserID, "avatar_url"), map[string]any{"avatar_url": "mxc://a/b"}), 403, "M_GUEST_ACCESS_FORBIDDEN")
		expectMatrixErr(t, "guest custom field",
			guest.Do("DELETE", profileURL(guest.UserID, "m.tz"), nil), 403, "M_GUEST_ACCESS_FORBIDDEN")
		guest.MustDo(http.StatusOK, "DELETE", profileURL(guest.UserID, "displayname"), nil)
	})
}

func TestProfileConcurrentFields(t *testing.T) {
	// Concurrent changes of different fields must all survive (the profile
	// is read, changed and written back in one transaction).
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		const n = 12
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := "com.example.f" + string(rune('a'+i))
				if r := alice.Do("PUT", profileURL(alice.UserID, key), map[string]any{key: i}); r.Status != 200 {
					t.Errorf("PUT %s: %d %s", key, r.Status, r.Body)
				}
			}()
		}
		wg.Wait()
		r := alice.MustDo(http.StatusOK, "GET", profileURL(alice.UserID), nil)
		if len(r.JSON) != n+1 {
			t.Errorf("profile after %d concurrent changes: %s", n, r.Body)
		}
	})
}
