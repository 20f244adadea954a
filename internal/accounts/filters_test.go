package accounts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/testutil"
)

// filterURL is the path to create a filter (no ID) or read one.
func filterURL(userID string, id ...string) string {
	p := "/_matrix/client/v3/user/" + url.PathEscape(userID) + "/filter"
	for _, s := range id {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// postFilter creates a filter and returns its ID.
func postFilter(t *testing.T, c *testutil.Client, filter any) string {
	t.Helper()
	r := c.MustDo(http.StatusOK, "POST", filterURL(c.UserID), filter)
	id, _ := r.JSON["filter_id"].(string)
	if id == "" || id[0] == '{' {
		t.Fatalf("filter_id: %s", r.Body)
	}
	return id
}

const specExampleFilter = `{
  "room": {
    "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
    "timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
    "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]}
  },
  "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
  "event_format": "client",
  "event_fields": ["type", "content", "sender"],
  "org.example.unknown": true
}`

func TestFilters(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")

		id := postFilter(t, alice, specExampleFilter)
		r := alice.MustDo(http.StatusOK, "GET", filterURL(alice.UserID, id), nil)
		var want, got any
		_ = json.Unmarshal([]byte(specExampleFilter), &want)
		_ = json.Unmarshal(r.Body, &got)
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("stored filter differs:\n got %s\nwant %s", r.Body, specExampleFilter)
		}

		// A different filter gets the next ID; the same filter again gets
		// the stored one's.
		id2 := postFilter(t, alice, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 0}}})
		if id == id2 {
			t.Errorf("two filters share ID %s", id)
		}
		if again := postFilter(t, alice, specExampleFilter); again != id {
			t.Errorf("identical filter: ID %s, want %s", again, id)
		}
		// IDs are per user: bob's first filter has alice's first ID too,
		// and his cannot be read by alice.
		bobID := postFilter(t, bob, map[string]any{})
		if bobID != id {
			t.Errorf("bob's first filter ID %s, alice's %s", bobID, id)
		}
		if r := bob.MustDo(http.StatusOK, "GET", filterURL(bob.UserID, bobID), nil); string(r.Body) != "{}" {
			t.Errorf("bob's filter: %s", r.Body)
		}
		if r := alice.MustDo(http.StatusOK, "GET", strings.Replace(filterURL(alice.UserID, id), "/v3/", "/r0/", 1), nil); r.JSON["room"] == nil {
			t.Errorf("alice's filter through r0: %s", r.Body)
		}

		// The Go API for /sync.
		f, err := srv.Accounts.GetFilter(context.Background(), alice.UserID, id)
		if err != nil {
			t.Fatal(err)
		}
		if f.Room == nil || f.Room.Timeline == nil || f.Room.Timeline.Limit == nil || *f.Room.Timeline.Limit != 10 ||
			len(f.Room.Timeline.NotSenders) != 1 || f.EventFormat != "client" || len(f.EventFields) != 3 {
			t.Errorf("GetFilter: %+v", f)
		}
		if _, err := srv.Accounts.GetFilter(context.Background(), alice.UserID, "999"); err == nil || !strings.Contains(err.Error(), "M_NOT_FOUND") {
			t.Errorf("GetFilter of an unknown ID: %v", err)
		}
	})
}

func TestFilterIDsUnderConcurrency(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		const n = 16
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := alice.Do("POST", filterURL(alice.UserID), map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": i + 1}}})
				if r.Status != 200 {
					t.Errorf("POST filter %d: %d %s", i, r.Status, r.Body)
					return
				}
				ids[i], _ = r.JSON["filter_id"].(string)
			}()
		}
		wg.Wait()
		seen := map[string]int{}
		for i, id := range ids {
			if j, dup := seen[id]; dup {
				t.Errorf("filters %d and %d share ID %q", j, i, id)
			}
			seen[id] = i
			r := alice.MustDo(http.StatusOK, "GET", filterURL(alice.UserID, id), nil)
			if want := fmt.Sprintf(`{"room":{"timeline":{"limit":%d}}}`, i+1); string(r.Body) != want {
				t.Errorf("filter %s: %s, want %s", id, r.Body, want)
			}
		}
	})
}

// invalidFilters are filters the schema rejects (among them Complement's
// TestFilter cases).
var invalidFilters = map[string]string{
	"presence not an object":       `{"presence": "not_an_object"}`,
	"account_data not an object":   `{"account_data": []}`,
	"room not an object":           `{"room": 1}`,
	"timeline not an object":       `{"room": {"timeline": "not_an_object"}}`,
	"state not an object":          `{"room": {"state": "not_an_object"}}`,
	"ephemeral not an object":      `{"room": {"ephemeral": "not_an_object"}}`,
	"room account_data not object": `{"room": {"account_data": "not_an_object"}}`,
	"rooms not a list":             `{"room": {"timeline": {"rooms": "not_a_list"}}}`,
	"not_rooms not a list":         `{"room": {"timeline": {"not_rooms": "not_a_list"}}}`,
	"senders not a list":           `{"room": {"timeline": {"senders": "not_a_list"}}}`,
	"not_senders not a list":       `{"room": {"timeline": {"not_senders": "not_a_list"}}}`,
	"types not a list":             `{"room": {"timeline": {"types": "not_a_list"}}}`,
	"not_types not a list":         `{"room": {"timeline": {"not_types": "not_a_list"}}}`,
	"types of numbers":             `{"room": {"timeline": {"types": [1]}}}`,
	"not a room ID":                `{"room": {"timeline": {"rooms": ["not_a_room_id"]}}}`,
	"top-level not a room ID":      `{"room": {"not_rooms": ["#alias:example.org"]}}`,
	"not a sender ID":              `{"room": {"timeline": {"senders": ["not_a_sender_id"]}}}`,
	"sender without server":        `{"presence": {"not_senders": ["@alice"]}}`,
	"bad event_format":             `{"event_format": "raw"}`,
	"event_fields not strings":     `{"event_fields": [1]}`,
	"event_fields not a list":      `{"event_fields": "type"}`,
	"negative limit":               `{"room": {"timeline": {"limit": -1}}}`,
	"fractional limit":             `{"room": {"timeline": {"limit": 1.5}}}`,
	"limit a string":               `{"room": {"timeline": {"limit": "10"}}}`,
	"huge limit":                   `{"presence": {"limit": 1e40}}`,
	"include_leave not a bool":     `{"room": {"include_leave": "yes"}}`,
	"contains_url not a bool":      `{"room": {"state": {"contains_url": 1}}}`,
	"lazy_load_members not a bool": `{"room": {"state": {"lazy_load_members": "true"}}}`,
	"not an object":                `[]`,
}

func TestFilterErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		guest := newGuest(t, srv, "guest1")
		anon := srv.Client(t)
		id := postFilter(t, alice, map[string]any{"presence": map[string]any{"limit": 5}})

		for name, body := range invalidFilters {
			expectMatrixErr(t, name, alice.Do("POST", filterURL(alice.UserID), body), 400, "M_BAD_JSON")
		}
		cases := []struct {
			name    string
			c       *testutil.Client
			method  string
			path    string
			body    any
			status  int
			errcode string
		}{
			{"not JSON", alice, "POST", filterURL(alice.UserID), "{room", 400, "M_NOT_JSON"},
			{"empty body", alice, "POST", filterURL(alice.UserID), "", 400, "M_NOT_JSON"},
			{"no token", anon, "POST", filterURL(alice.UserID), map[string]any{}, 401, "M_MISSING_TOKEN"},
			{"no token on GET", anon, "GET", filterURL(alice.UserID, id), nil, 401, "M_MISSING_TOKEN"},
			{"guest", guest, "POST", filterURL(guest.UserID), map[string]any{}, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"create for someone else", bob, "POST", filterURL(alice.UserID), map[string]any{}, 403, "M_FORBIDDEN"},
			{"read someone else's", bob, "GET", filterURL(alice.UserID, id), nil, 403, "M_FORBIDDEN"},
			{"unknown ID", alice, "GET", filterURL(alice.UserID, "12345"), nil, 404, "M_NOT_FOUND"},
			{"non-numeric ID", alice, "GET", filterURL(alice.UserID, "abc"), nil, 404, "M_NOT_FOUND"},
			{"negative ID", alice, "GET", filterURL(alice.UserID, "-1"), nil, 404, "M_NOT_FOUND"},
			{"ID out of range", alice, "GET", filterURL(alice.UserID, "99999999999999999999999"), nil, 404, "M_NOT_FOUND"},
			{"wrong method", alice, "PUT", filterURL(alice.UserID), map[string]any{}, 405, "M_UNRECOGNIZED"},
		}
		for _, tc := range cases {
			expectMatrixErr(t, tc.name, tc.c.Do(tc.method, tc.path, tc.body), tc.status, tc.errcode)
		}
	})
}

func TestParseFilter(t *testing.T) {
	f, err := accounts.ParseFilter([]byte(`{"room": {"rooms": [], "timeline": {"types": ["m.room.*"], "contains_url": false, "lazy_load_members": true}}, "presence": {"not_types": ["*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	// An empty list is kept apart from an absent one.
	if f.Room.Rooms == nil || len(f.Room.Rooms) != 0 || f.Room.NotRooms != nil {
		t.Errorf("rooms: %#v / %#v", f.Room.Rooms, f.Room.NotRooms)
	}
	tl := f.Room.Timeline
	if len(tl.Types) != 1 || tl.ContainsURL == nil || *tl.ContainsURL || !tl.LazyLoadMembers || tl.Limit != nil {
		t.Errorf("timeline: %+v", tl)
	}
	if f.Presence == nil || len(f.Presence.NotTypes) != 1 || f.AccountData != nil || f.Room.State != nil {
		t.Errorf("filter: %+v", f)
	}
	for name, body := range invalidFilters {
		if _, err := accounts.ParseFilter([]byte(body)); err == nil || !strings.Contains(err.Error(), "M_BAD_JSON") {
			t.Errorf("ParseFilter(%s): %v", name, err)
		}
	}
	if _, err := accounts.ParseFilter([]byte(`{"room":`)); err == nil || !strings.Contains(err.Error(), "M_NOT_JSON") {
		t.Errorf("ParseFilter of broken JSON: %v", err)
	}
}

// FuzzParseFilter checks that no input makes ParseFilter panic and that
// every accepted filter is a JSON object.
func FuzzParseFilter(f *testing.F) {
	f.Add([]byte(specExampleFilter))
	for _, body := range invalidFilters {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := accounts.ParseFilter(raw); err == nil {
			var m map[string]any
			if json.Unmarshal(raw, &m) != nil {
				t.Errorf("accepted %q, which is not a JSON object", raw)
			}
		}
	})
}
