package accounts_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// createTestRoom creates a room with c as its creator and returns its ID.
func createTestRoom(t *testing.T, c *testutil.Client) string {
	t.Helper()
	r := c.MustDo(http.StatusOK, "POST", "/_matrix/client/v3/createRoom", map[string]any{})
	id, _ := r.JSON["room_id"].(string)
	if id == "" {
		t.Fatalf("createRoom: %s", r.Body)
	}
	return id
}

// accountDataURL is the path of a global (roomID "") or per-room account
// data entry.
func accountDataURL(userID, roomID, typ string) string {
	p := "/_matrix/client/v3/user/" + url.PathEscape(userID)
	if roomID != "" {
		p += "/rooms/" + url.PathEscape(roomID)
	}
	return p + "/account_data/" + url.PathEscape(typ)
}

func TestAccountData(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		room := createTestRoom(t, alice)

		for _, roomID := range []string{"", room} {
			path := accountDataURL(alice.UserID, roomID, "org.example.config")
			expectMatrixErr(t, "absent entry "+roomID, alice.Do("GET", path, nil), 404, "M_NOT_FOUND")
			alice.MustDo(http.StatusOK, "PUT", path, map[string]any{"value": "first " + roomID})
			if r := alice.MustDo(http.StatusOK, "GET", path, nil); r.JSON["value"] != "first "+roomID || len(r.JSON) != 1 {
				t.Errorf("GET after PUT %q: %s", roomID, r.Body)
			}
			alice.MustDo(http.StatusOK, "PUT", path, "  {\"value\": \"second\",\n \"n\": [1, 2]}  ")
			if r := alice.MustDo(http.StatusOK, "GET", path, nil); string(r.Body) != `{"value":"second","n":[1,2]}` {
				t.Errorf("GET after overwrite %q: %s", roomID, r.Body)
			}
		}
		// Room data does not fall back to global data, nor the reverse.
		alice.MustDo(http.StatusOK, "PUT", accountDataURL(alice.UserID, "", "org.example.global_only"), map[string]any{})
		expectMatrixErr(t, "no fallback to global", alice.Do("GET", accountDataURL(alice.UserID, room, "org.example.global_only"), nil), 404, "M_NOT_FOUND")
		alice.MustDo(http.StatusOK, "PUT", accountDataURL(alice.UserID, room, "org.example.room_only"), map[string]any{})
		expectMatrixErr(t, "no fallback to room", alice.Do("GET", accountDataURL(alice.UserID, "", "org.example.room_only"), nil), 404, "M_NOT_FOUND")
		// An empty object is a value like any other.
		if r := alice.MustDo(http.StatusOK, "GET", accountDataURL(alice.UserID, "", "org.example.global_only"), nil); string(r.Body) != "{}" {
			t.Errorf("empty object: %s", r.Body)
		}
		// Through r0 too.
		alice.MustDo(http.StatusOK, "GET", strings.Replace(accountDataURL(alice.UserID, room, "org.example.config"), "/v3/", "/r0/", 1), nil)
	})
}

func TestAccountDataServerManaged(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		room := createTestRoom(t, alice)
		for _, typ := range []string{"m.fully_read", "m.push_rules"} {
			for _, roomID := range []string{"", room} {
				expectMatrixErr(t, "client sets "+typ+" "+roomID,
					alice.Do("PUT", accountDataURL(alice.UserID, roomID, typ), map[string]any{"event_id": "$x"}), 405, "M_BAD_JSON")
			}
		}
		// The server sets them through the Go API; clients read them.
		ctx := context.Background()
		if err := srv.Accounts.SetAccountData(ctx, alice.UserID, room, "m.fully_read", json.RawMessage(`{"event_id": "$ev"}`)); err != nil {
			t.Fatal(err)
		}
		if r := alice.MustDo(http.StatusOK, "GET", accountDataURL(alice.UserID, room, "m.fully_read"), nil); r.JSON["event_id"] != "$ev" {
			t.Errorf("read m.fully_read: %s", r.Body)
		}
		got, err := srv.Accounts.GetAccountData(ctx, alice.UserID, room, "m.fully_read")
		if err != nil || string(got) != `{"event_id":"$ev"}` {
			t.Errorf("GetAccountData: %s %v", got, err)
		}
		if got, err := srv.Accounts.GetAccountData(ctx, alice.UserID, "", "m.fully_read"); got != nil || err != nil {
			t.Errorf("GetAccountData of an absent entry: %s %v", got, err)
		}
		for _, bad := range []string{`[1]`, `"x"`, `{`, ``} {
			if err := srv.Accounts.SetAccountData(ctx, alice.UserID, "", "org.example.x", json.RawMessage(bad)); err == nil || !strings.Contains(err.Error(), "M_BAD_JSON") {
				t.Errorf("SetAccountData(%q): %v", bad, err)
			}
		}
	})
}

func TestAccountDataErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		guest := newGuest(t, srv, "guest1")
		anon := srv.Client(t)
		room := createTestRoom(t, alice)
		global := accountDataURL(alice.UserID, "", "org.example.x")
		inRoom := accountDataURL(alice.UserID, room, "org.example.x")
		alice.MustDo(http.StatusOK, "PUT", global, map[string]any{"secret": 1})
		alice.MustDo(http.StatusOK, "PUT", inRoom, map[string]any{"secret": 2})

		cases := []struct {
			name    string
			c       *testutil.Client
			method  string
			path    string
			body    any
			status  int
			errcode string
		}{
			{"no token", anon, "GET", global, nil, 401, "M_MISSING_TOKEN"},
			{"no token, room", anon, "PUT", inRoom, map[string]any{}, 401, "M_MISSING_TOKEN"},
			{"guest", guest, "PUT", accountDataURL(guest.UserID, "", "org.example.x"), map[string]any{}, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"read someone else's", bob, "GET", global, nil, 403, "M_FORBIDDEN"},
			{"write someone else's", bob, "PUT", global, map[string]any{"x": 1}, 403, "M_FORBIDDEN"},
			{"read someone else's room data", bob, "GET", inRoom, nil, 403, "M_FORBIDDEN"},
			{"write someone else's room data", bob, "PUT", inRoom, map[string]any{"x": 1}, 403, "M_FORBIDDEN"},
			{"body not JSON", alice, "PUT", global, "{nope", 400, "M_NOT_JSON"},
			{"empty body", alice, "PUT", global, "", 400, "M_NOT_JSON"},
			{"body an array", alice, "PUT", global, `[1, 2]`, 400, "M_BAD_JSON"},
			{"body a string", alice, "PUT", inRoom, `"text"`, 400, "M_BAD_JSON"},
			{"body too large", alice, "PUT", global, `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "M_TOO_LARGE"},
			{"bad room ID on PUT", alice, "PUT", accountDataURL(alice.UserID, "#alias:example.org", "org.example.x"), map[string]any{}, 400, "M_INVALID_PARAM"},
			{"bad room ID on GET", alice, "GET", accountDataURL(alice.UserID, "@notaroom:example.org", "org.example.x"), nil, 400, "M_INVALID_PARAM"},
			{"room ID only a sigil", alice, "GET", accountDataURL(alice.UserID, "!", "org.example.x"), nil, 400, "M_INVALID_PARAM"},
			{"type too long", alice, "PUT", accountDataURL(alice.UserID, "", strings.Repeat("t", 256)), map[string]any{}, 400, "M_INVALID_PARAM"},
			{"wrong method", alice, "POST", global, map[string]any{}, 405, "M_UNRECOGNIZED"},
		}
		for _, tc := range cases {
			expectMatrixErr(t, tc.name, tc.c.Do(tc.method, tc.path, tc.body), tc.status, tc.errcode)
		}
		// Nothing above changed alice's data.
		if r := alice.MustDo(http.StatusOK, "GET", global, nil); string(r.Body) != `{"secret":1}` {
			t.Errorf("global data after refused writes: %s", r.Body)
		}
		if r := alice.MustDo(http.StatusOK, "GET", inRoom, nil); string(r.Body) != `{"secret":2}` {
			t.Errorf("room data after refused writes: %s", r.Body)
		}
	})
}

func TestAccountDataUnknownRoom(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		expectMatrixErr(t, "unknown room",
			alice.Do("PUT", accountDataURL(alice.UserID, "!unknown:example.org", "m.tag"), map[string]any{"tags": map[string]any{}}), 404, "M_NOT_FOUND")
		expectMatrixErr(t, "unknown room, GET",
			alice.Do("GET", accountDataURL(alice.UserID, "!unknown:example.org", "m.tag"), nil), 404, "M_NOT_FOUND")
	})
}
