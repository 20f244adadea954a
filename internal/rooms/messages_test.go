package rooms_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

// readRoom is a room of the read-path tests, with helpers to send events
// and read them back.
type readRoom struct {
	t  testing.TB
	id string
}

var txnCounter atomic.Int64

// newReadRoom creates a room as c with the given createRoom body.
func newReadRoom(t testing.TB, c *testutil.Client, body map[string]any) *readRoom {
	t.Helper()
	r := c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body)
	id, _ := r.JSON["room_id"].(string)
	if id == "" {
		t.Fatalf("createRoom: %s", r.Body)
	}
	return &readRoom{t: t, id: id}
}

// path is a client-server path under /rooms/{roomId} of API version ver.
func (rm *readRoom) path(ver, rest string) string {
	return "/_matrix/client/" + ver + "/rooms/" + url.PathEscape(rm.id) + rest
}

// send sends an event of type typ as c and returns its ID.
func (rm *readRoom) send(c *testutil.Client, typ string, content map[string]any) string {
	rm.t.Helper()
	txn := fmt.Sprintf("txn%d", txnCounter.Add(1))
	r := c.MustDo(200, "PUT", rm.path("v3", "/send/"+url.PathEscape(typ)+"/"+txn), content)
	return r.JSON["event_id"].(string)
}

// say sends a text message as c and returns its ID.
func (rm *readRoom) say(c *testutil.Client, body string) string {
	rm.t.Helper()
	return rm.send(c, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// join makes c invited (by inviter) and joined.
func (rm *readRoom) join(inviter, c *testutil.Client) {
	rm.t.Helper()
	inviter.MustDo(200, "POST", rm.path("v3", "/invite"), map[string]any{"user_id": c.UserID})
	c.MustDo(200, "POST", rm.path("v3", "/join"), map[string]any{})
}

// page is one decoded /messages (or /context, /relations) answer.
type page struct {
	Start        string                       `json:"start"`
	End          *string                      `json:"end"`
	Chunk        []map[string]json.RawMessage `json:"chunk"`
	State        []map[string]json.RawMessage `json:"state"`
	NextBatch    string                       `json:"next_batch"`
	PrevBatch    string                       `json:"prev_batch"`
	Depth        *int                         `json:"recursion_depth"`
	EventsBefore []map[string]json.RawMessage `json:"events_before"`
	EventsAfter  []map[string]json.RawMessage `json:"events_after"`
	Event        map[string]json.RawMessage   `json:"event"`
}

// get requests path as c, expects 200 and decodes the page.
func (rm *readRoom) get(c *testutil.Client, path string) *page {
	rm.t.Helper()
	r := c.MustDo(200, "GET", path, nil)
	var p page
	if err := json.Unmarshal(r.Body, &p); err != nil {
		rm.t.Fatalf("decode %s: %v", r.Body, err)
	}
	return &p
}

// messages requests /messages with the query as c.
func (rm *readRoom) messages(c *testutil.Client, query string) *page {
	rm.t.Helper()
	return rm.get(c, rm.path("v3", "/messages?"+query))
}

// str decodes a JSON string field of an event.
func str(ev map[string]json.RawMessage, key string) string {
	var s string
	_ = json.Unmarshal(ev[key], &s)
	return s
}

// ids returns the event IDs of evs.
func ids(evs []map[string]json.RawMessage) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = str(ev, "event_id")
	}
	return out
}

// bodies returns the content.body of evs ("" for events without).
func bodies(evs []map[string]json.RawMessage) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(ev["content"], &c)
		out[i] = c.Body
	}
	return out
}

// paginate pages through /messages from query until end is omitted and
// returns the events and the pages' (from, end) tokens.
func (rm *readRoom) paginate(c *testutil.Client, dir string, limit int, extra string) ([]map[string]json.RawMessage, []*page) {
	rm.t.Helper()
	var all []map[string]json.RawMessage
	var pages []*page
	from := ""
	for i := 0; ; i++ {
		if i > 1000 {
			rm.t.Fatal("pagination does not end")
		}
		q := fmt.Sprintf("dir=%s&limit=%d%s", dir, limit, extra)
		if from != "" {
			q += "&from=" + url.QueryEscape(from)
		}
		p := rm.messages(c, q)
		if from != "" && p.Start != from {
			rm.t.Fatalf("start %q, want the from token %q", p.Start, from)
		}
		if len(p.Chunk) > limit {
			rm.t.Fatalf("chunk of %d events with limit %d", len(p.Chunk), limit)
		}
		all = append(all, p.Chunk...)
		pages = append(pages, p)
		if p.End == nil {
			return all, pages
		}
		from = *p.End
	}
}

func TestMessagesPagination(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat", "name": "history"})
		var sent []string
		for i := range 50 {
			sent = append(sent, rm.say(alice, fmt.Sprintf("m%d", i)))
		}
		back, backPages := rm.paginate(alice, "b", 7, "")
		fwd, _ := rm.paginate(alice, "f", 6, "")
		backIDs, fwdIDs := ids(back), ids(fwd)
		if len(backIDs) < 50+5 {
			t.Fatalf("backwards pagination returned %d events", len(backIDs))
		}
		seen := map[string]bool{}
		for _, id := range backIDs {
			if seen[id] {
				t.Fatalf("duplicate event %s", id)
			}
			seen[id] = true
		}
		if typ := str(back[len(back)-1], "type"); typ != "m.room.create" {
			t.Fatalf("backwards pagination ends with %s, not the create event", typ)
		}
		if str(fwd[0], "type") != "m.room.create" {
			t.Fatalf("forwards pagination starts with %s", str(fwd[0], "type"))
		}
		slices.Reverse(fwdIDs)
		if !slices.Equal(backIDs, fwdIDs) {
			t.Fatalf("forwards and backwards pagination differ:\n%v\n%v", backIDs, fwdIDs)
		}
		newestFirst := slices.Clone(sent)
		slices.Reverse(newestFirst)
		if !slices.Equal(backIDs[:50], newestFirst) {
			t.Fatalf("newest events are not the messages in reverse order")
		}
		// Paginating forwards from a backwards page's end returns that page's
		// events back, oldest first: the tokens are boundaries.
		mid := backPages[2]
		p := rm.messages(alice, "dir=f&limit=7&from="+url.QueryEscape(*mid.End))
		got := ids(p.Chunk)
		want := ids(mid.Chunk)
		slices.Reverse(want)
		if !slices.Equal(got, want) {
			t.Fatalf("f from a b end token: %v, want %v", got, want)
		}
		// to stops at a token: from the start back to the end of page 2 is
		// pages 1 and 2, and no end.
		p = rm.messages(alice, "dir=b&limit=100&to="+url.QueryEscape(*backPages[1].End))
		if len(p.Chunk) != 14 || p.End != nil {
			t.Fatalf("b with to: %d events, end %v", len(p.Chunk), p.End)
		}
		p = rm.messages(alice, "dir=f&limit=100&from="+url.QueryEscape(*backPages[1].End)+"&to="+url.QueryEscape(backPages[0].Start))
		if len(p.Chunk) != 14 || p.End != nil {
			t.Fatalf("f with to: %d events, end %v", len(p.Chunk), p.End)
		}
		// Default limit 10; a huge limit is capped, not refused.
		if p := rm.messages(alice, "dir=b"); len(p.Chunk) != 10 || p.End == nil {
			t.Fatalf("default limit: %d events", len(p.Chunk))
		}
		if p := rm.messages(alice, "dir=b&limit=100000"); len(p.Chunk) != len(backIDs) || p.End != nil {
			t.Fatalf("large limit: %d events, end %v", len(p.Chunk), p.End)
		}
		// A /sync-style token with other streams after "_" is accepted.
		p = rm.messages(alice, "dir=b&limit=3&from="+url.QueryEscape(backPages[0].Start+"_0_0"))
		if !slices.Equal(ids(p.Chunk), backIDs[:3]) {
			t.Fatalf("sync token: %v", ids(p.Chunk))
		}
		// Events sent after a token are found by paginating forwards from it.
		start := rm.messages(alice, "dir=b&limit=1").Start
		late := rm.say(alice, "late")
		p = rm.messages(alice, "dir=f&from="+url.QueryEscape(start))
		if !slices.Equal(ids(p.Chunk), []string{late}) || p.End != nil {
			t.Fatalf("f from the newest start: %v", ids(p.Chunk))
		}
	})
}

func TestMessagesFilterAndLazyLoading(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		rm.join(alice, bob)
		rm.join(alice, carol)
		rm.say(alice, "a1")
		rm.say(bob, "b1")
		img := rm.send(bob, "m.room.message", map[string]any{"msgtype": "m.image", "body": "cat", "url": "mxc://x/y"})
		rm.send(carol, "org.example.custom", map[string]any{"body": "c1"})
		rm.say(carol, "c2")
		rm.say(bob, "b2")

		query := func(filter string) []string {
			t.Helper()
			return bodies(rm.messages(alice, "dir=b&limit=50&filter="+url.QueryEscape(filter)).Chunk)
		}
		cases := []struct {
			filter string
			want   []string
		}{
			{`{"types":["m.room.message"]}`, []string{"b2", "c2", "cat", "b1", "a1"}},
			{`{"types":["org.*"]}`, []string{"c1"}},
			{`{"types":["m.room.message"],"senders":["` + bob.UserID + `"]}`, []string{"b2", "cat", "b1"}},
			{`{"types":["m.room.message"],"not_senders":["` + bob.UserID + `"]}`, []string{"c2", "a1"}},
			{`{"not_types":["m.room.*"]}`, []string{"c1"}},
			{`{"types":["m.room.message"],"contains_url":true}`, []string{"cat"}},
			{`{"types":["m.room.message"],"contains_url":false}`, []string{"b2", "c2", "b1", "a1"}},
			{`{"types":["m.room.message"],"limit":2}`, []string{"b2", "c2"}},
			{`{"types":["m.room.message"],"not_rooms":["` + rm.id + `"]}`, []string{}},
			{`{"types":[]}`, []string{}},
		}
		for _, c := range cases {
			if got := query(c.filter); !slices.Equal(got, c.want) {
				t.Errorf("filter %s: %v, want %v", c.filter, got, c.want)
			}
		}
		if p := rm.messages(alice, "dir=b&limit=1&filter="+url.QueryEscape(`{"contains_url":true}`)); len(p.Chunk) != 1 || str(p.Chunk[0], "event_id") != img {
			t.Fatalf("contains_url: %v", ids(p.Chunk))
		}

		// Without lazy loading there is no state; with it, the member events
		// of the chunk's senders.
		if p := rm.messages(alice, "dir=b&limit=2"); p.State != nil {
			t.Fatalf("state without lazy loading: %d events", len(p.State))
		}
		p := rm.messages(alice, "dir=b&limit=2&filter="+url.QueryEscape(`{"lazy_load_members":true}`))
		senders := map[string]bool{}
		for _, ev := range p.Chunk {
			senders[str(ev, "sender")] = true
		}
		if !senders[bob.UserID] || !senders[carol.UserID] || len(senders) != 2 {
			t.Fatalf("chunk senders: %v", senders)
		}
		var members []string
		for _, ev := range p.State {
			if str(ev, "type") != "m.room.member" {
				t.Fatalf("lazy-loaded state has a %s event", str(ev, "type"))
			}
			members = append(members, str(ev, "state_key"))
		}
		slices.Sort(members)
		want := []string{bob.UserID, carol.UserID}
		slices.Sort(want)
		if !slices.Equal(members, want) {
			t.Fatalf("lazy-loaded members %v, want %v", members, want)
		}
	})
}

// visibilityRoom sets up a room with the given history visibility where
// alice says "before" before bob is invited, "invited" while he is
// invited and "joined" after he joined.
func visibilityRoom(t *testing.T, alice, bob *testutil.Client, vis string) *readRoom {
	t.Helper()
	rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
		{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": vis}},
	}})
	rm.say(alice, "before")
	alice.MustDo(200, "POST", rm.path("v3", "/invite"), map[string]any{"user_id": bob.UserID})
	rm.say(alice, "invited")
	bob.MustDo(200, "POST", rm.path("v3", "/join"), map[string]any{})
	rm.say(alice, "joined")
	return rm
}

// messageBodies lists the m.room.message bodies c sees, oldest first.
func (rm *readRoom) messageBodies(c *testutil.Client) []string {
	rm.t.Helper()
	evs, _ := rm.paginate(c, "f", 4, "&filter="+url.QueryEscape(`{"types":["m.room.message"]}`))
	return bodies(evs)
}

func TestMessagesHistoryVisibility(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		eve := srv.NewUser(t, "eve", "pw")
		cases := []struct {
			vis          string
			bob          []string
			strangerSees bool
		}{
			{"joined", []string{"joined"}, false},
			{"invited", []string{"invited", "joined"}, false},
			{"shared", []string{"before", "invited", "joined"}, false},
			{"world_readable", []string{"before", "invited", "joined"}, true},
		}
		for _, c := range cases {
			t.Run(c.vis, func(t *testing.T) {
				rm := visibilityRoom(t, alice, bob, c.vis)
				if got := rm.messageBodies(bob); !slices.Equal(got, c.bob) {
					t.Fatalf("bob sees %v, want %v", got, c.bob)
				}
				if got := rm.messageBodies(alice); len(got) != 3 {
					t.Fatalf("alice sees %v", got)
				}
				// Bob sees his own join whatever the visibility.
				evs, _ := rm.paginate(bob, "b", 10, "")
				if !slices.ContainsFunc(evs, func(ev map[string]json.RawMessage) bool {
					return str(ev, "type") == "m.room.member" && str(ev, "state_key") == bob.UserID
				}) {
					t.Fatal("bob does not see his membership")
				}
				r := eve.Do("GET", rm.path("v3", "/messages?dir=b"), nil)
				if c.strangerSees {
					if r.Status != 200 || len(rm.messageBodies(eve)) != 3 {
						t.Fatalf("stranger in world_readable room: %d %s", r.Status, r.Body)
					}
				} else if r.Status != 403 || r.ErrCode() != "M_FORBIDDEN" {
					t.Fatalf("stranger: %d %s", r.Status, r.Body)
				}
				// After leaving, bob sees history up to his leave only.
				bob.MustDo(200, "POST", rm.path("v3", "/leave"), map[string]any{})
				rm.say(alice, "after leave")
				got := rm.messageBodies(bob)
				if c.vis == "world_readable" {
					if len(got) != 4 {
						t.Fatalf("left user in world_readable room sees %v", got)
					}
					return
				}
				if !slices.Equal(got, c.bob) {
					t.Fatalf("after leaving bob sees %v, want %v", got, c.bob)
				}
				p := rm.messages(bob, "dir=b&limit=1")
				if len(p.Chunk) != 1 || str(p.Chunk[0], "type") != "m.room.member" || str(p.Chunk[0], "state_key") != bob.UserID {
					t.Fatalf("newest event bob sees is not his leave: %v", p.Chunk)
				}
			})
		}
		// An invited user may not page a room that is not world-readable.
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		alice.MustDo(200, "POST", rm.path("v3", "/invite"), map[string]any{"user_id": eve.UserID})
		if r := eve.Do("GET", rm.path("v3", "/messages?dir=b"), nil); r.Status != 403 || r.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("invited user: %d %s", r.Status, r.Body)
		}
	})
}

func TestReadErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		eve := srv.NewUser(t, "eve", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		msg := rm.say(alice, "hello")
		other := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		otherMsg := other.say(alice, "elsewhere")
		ev := url.PathEscape(msg)
		cases := []struct {
			c       *testutil.Client
			path    string
			status  int
			errcode string
		}{
			{alice, "/_matrix/client/v3/rooms/notaroom/messages?dir=b", 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=x"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&limit=-1"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&limit=ten"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&from=garbage"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&from=sabc"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&to=garbage"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&filter=%7Bnot-json"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/messages?dir=b&filter="+url.QueryEscape(`{"limit":"x"}`)), 400, "M_BAD_JSON"},
			{alice, rm.path("v3", "/messages?dir=b&filter="+url.QueryEscape(`{"senders":["nobody"]}`)), 400, "M_BAD_JSON"},
			{alice, rm.path("v3", "/messages?dir=b&filter="+url.QueryEscape(`[1]`)), 400, "M_BAD_JSON"},
			{alice, "/_matrix/client/v3/rooms/" + url.PathEscape("!unknown:nowhere") + "/messages?dir=b", 403, "M_FORBIDDEN"},
			{eve, rm.path("v3", "/messages?dir=b"), 403, "M_FORBIDDEN"},

			{alice, rm.path("v3", "/context/"+url.PathEscape("$unknown")), 404, "M_NOT_FOUND"},
			{alice, rm.path("v3", "/context/"+url.PathEscape(otherMsg)), 404, "M_NOT_FOUND"},
			{alice, rm.path("v3", "/context/"+ev+"?limit=-3"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v3", "/context/"+ev+"?filter=nope"), 400, "M_INVALID_PARAM"},
			{alice, "/_matrix/client/v3/rooms/bad/context/" + ev, 400, "M_INVALID_PARAM"},
			{eve, rm.path("v3", "/context/"+ev), 403, "M_FORBIDDEN"},

			{alice, rm.path("v1", "/relations/"+url.PathEscape("$unknown")), 404, "M_NOT_FOUND"},
			{alice, rm.path("v1", "/relations/"+url.PathEscape(otherMsg)), 404, "M_NOT_FOUND"},
			{alice, rm.path("v1", "/relations/"+ev+"?dir=up"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/relations/"+ev+"?from=x"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/relations/"+ev+"?limit=x"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/relations/"+ev+"?recurse=maybe"), 400, "M_INVALID_PARAM"},
			{alice, "/_matrix/client/v1/rooms/bad/relations/" + ev, 400, "M_INVALID_PARAM"},
			{eve, rm.path("v1", "/relations/"+ev), 403, "M_FORBIDDEN"},

			{alice, rm.path("v1", "/threads?include=some"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/threads?limit=0"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/threads?from=x"), 400, "M_INVALID_PARAM"},
			{alice, "/_matrix/client/v1/rooms/bad/threads", 400, "M_INVALID_PARAM"},
			{eve, rm.path("v1", "/threads"), 403, "M_FORBIDDEN"},

			{alice, rm.path("v1", "/timestamp_to_event?dir=f"), 400, "M_MISSING_PARAM"},
			{alice, rm.path("v1", "/timestamp_to_event?dir=f&ts=soon"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/timestamp_to_event?ts=1"), 400, "M_MISSING_PARAM"},
			{alice, rm.path("v1", "/timestamp_to_event?ts=1&dir=x"), 400, "M_INVALID_PARAM"},
			{alice, rm.path("v1", "/timestamp_to_event?ts=1&dir=b"), 404, "M_NOT_FOUND"},
			{alice, "/_matrix/client/v1/rooms/bad/timestamp_to_event?ts=1&dir=b", 400, "M_INVALID_PARAM"},
			{eve, rm.path("v1", "/timestamp_to_event?ts=1&dir=f"), 403, "M_FORBIDDEN"},
		}
		for _, c := range cases {
			r := c.c.Do("GET", c.path, nil)
			if r.Status != c.status || r.ErrCode() != c.errcode {
				t.Errorf("GET %s as %s: %d %s, want %d %s", c.path, c.c.UserID, r.Status, r.Body, c.status, c.errcode)
			}
		}
	})
}

func TestContext(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}},
		}})
		var sent []string
		for i := range 10 {
			sent = append(sent, rm.say(alice, fmt.Sprintf("m%d", i)))
		}
		rm.join(alice, bob)
		rm.join(alice, carol)
		for i := 10; i < 20; i++ {
			sent = append(sent, rm.say(bob, fmt.Sprintf("m%d", i)))
		}
		p := rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(sent[15])+"?limit=6"))
		if str(p.Event, "event_id") != sent[15] {
			t.Fatalf("event: %v", p.Event)
		}
		if got := ids(p.EventsBefore); !slices.Equal(got, []string{sent[14], sent[13], sent[12]}) {
			t.Fatalf("events_before: %v", bodies(p.EventsBefore))
		}
		if got := ids(p.EventsAfter); !slices.Equal(got, []string{sent[16], sent[17], sent[18]}) {
			t.Fatalf("events_after: %v", bodies(p.EventsAfter))
		}
		if p.Start == "" || p.End == nil {
			t.Fatalf("tokens: %q %v", p.Start, p.End)
		}
		// The tokens continue with /messages.
		if m := rm.messages(alice, "dir=b&limit=2&from="+url.QueryEscape(p.Start)); !slices.Equal(ids(m.Chunk), []string{sent[11], sent[10]}) {
			t.Fatalf("b from context start: %v", bodies(m.Chunk))
		}
		if m := rm.messages(alice, "dir=f&limit=2&from="+url.QueryEscape(*p.End)); !slices.Equal(ids(m.Chunk), []string{sent[19]}) {
			t.Fatalf("f from context end: %v", bodies(m.Chunk))
		}
		// State after the last event: the full state, or with lazy loading
		// the non-member state plus the senders' members.
		types := map[string]int{}
		for _, ev := range p.State {
			types[str(ev, "type")]++
		}
		if types["m.room.create"] != 1 || types["m.room.member"] != 3 {
			t.Fatalf("state: %v", types)
		}
		p = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(sent[15])+"?limit=6&filter="+url.QueryEscape(`{"lazy_load_members":true}`)))
		var members []string
		for _, ev := range p.State {
			if str(ev, "type") == "m.room.member" {
				members = append(members, str(ev, "state_key"))
			}
		}
		if !slices.Equal(members, []string{bob.UserID}) {
			t.Fatalf("lazy-loaded members: %v", members)
		}
		// The filter applies around the event, not to it.
		p = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(sent[15])+"?limit=4&filter="+url.QueryEscape(`{"types":["m.room.member"]}`)))
		if str(p.Event, "event_id") != sent[15] || len(p.EventsAfter) != 0 || len(p.EventsBefore) != 2 {
			t.Fatalf("filtered context: before %v after %v", ids(p.EventsBefore), ids(p.EventsAfter))
		}
		// limit=0 still returns the event.
		p = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(sent[0])+"?limit=0"))
		if str(p.Event, "event_id") != sent[0] || len(p.EventsBefore)+len(p.EventsAfter) != 0 {
			t.Fatalf("limit 0: %v", p)
		}
		// Context around the newest event: nothing after it.
		p = rm.get(alice, rm.path("v3", "/context/"+url.PathEscape(sent[19])))
		if len(p.EventsAfter) != 0 || len(p.EventsBefore) != 5 {
			t.Fatalf("newest: %d before, %d after", len(p.EventsBefore), len(p.EventsAfter))
		}
		// Events from before carol joined a "joined" room are invisible to
		// her: 404, and her context stops at her join.
		if r := carol.Do("GET", rm.path("v3", "/context/"+url.PathEscape(sent[3])), nil); r.Status != 404 || r.ErrCode() != "M_NOT_FOUND" {
			t.Fatalf("invisible event: %d %s", r.Status, r.Body)
		}
		p = rm.get(carol, rm.path("v3", "/context/"+url.PathEscape(sent[10])+"?limit=20"))
		for _, ev := range p.EventsBefore {
			if str(ev, "type") == "m.room.message" {
				t.Fatalf("carol sees %s from before her join", bodies([]map[string]json.RawMessage{ev}))
			}
		}
	})
}

func TestTimestampToEvent(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		rm := newReadRoom(t, alice, map[string]any{"preset": "private_chat"})
		type sentEvent struct {
			id string
			ts int64
		}
		var sent []sentEvent
		for i := range 3 {
			time.Sleep(3 * time.Millisecond) // distinct timestamps
			id := rm.say(alice, fmt.Sprintf("m%d", i))
			r := alice.MustDo(200, "GET", rm.path("v3", "/event/"+url.PathEscape(id)), nil)
			sent = append(sent, sentEvent{id, int64(r.JSON["origin_server_ts"].(float64))})
		}
		if sent[0].ts >= sent[1].ts || sent[1].ts >= sent[2].ts {
			t.Fatalf("timestamps not increasing: %v", sent)
		}
		find := func(ts int64, dir string) (string, int64) {
			t.Helper()
			r := alice.MustDo(200, "GET", rm.path("v1", fmt.Sprintf("/timestamp_to_event?ts=%d&dir=%s", ts, dir)), nil)
			return r.JSON["event_id"].(string), int64(r.JSON["origin_server_ts"].(float64))
		}
		if id, ts := find(sent[1].ts, "f"); id != sent[1].id || ts != sent[1].ts {
			t.Fatalf("f at m1's ts: %s %d", id, ts)
		}
		if id, _ := find(sent[1].ts+1, "f"); id != sent[2].id {
			t.Fatalf("f after m1: %s", id)
		}
		if id, _ := find(sent[1].ts-1, "b"); id != sent[0].id {
			t.Fatalf("b before m1: %s", id)
		}
		if id, _ := find(sent[2].ts+1_000_000, "b"); id != sent[2].id {
			t.Fatalf("b in the future: %s", id)
		}
		if r := alice.Do("GET", rm.path("v1", fmt.Sprintf("/timestamp_to_event?ts=%d&dir=f", sent[2].ts+1_000_000)), nil); r.Status != 404 || r.ErrCode() != "M_NOT_FOUND" {
			t.Fatalf("f in the future: %d %s", r.Status, r.Body)
		}
	})
}
