package sync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

// syncer is a test client's sync position.
type syncer struct {
	c     *testutil.Client
	since string
}

func (s *syncer) sync(t testing.TB, params string) map[string]any {
	t.Helper()
	path := "/_matrix/client/v3/sync?timeout=0"
	if params != "" {
		path = "/_matrix/client/v3/sync?" + params
	}
	if s.since != "" {
		path += "&since=" + url.QueryEscape(s.since)
	}
	r := s.c.MustDo(200, "GET", path, nil)
	s.since = r.JSON["next_batch"].(string)
	return r.JSON
}

func dig(m map[string]any, path ...string) any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

func timelineBodies(resp map[string]any, roomID string) []string {
	evs, _ := dig(resp, "rooms", "join", roomID, "timeline", "events").([]any)
	var out []string
	for _, e := range evs {
		ev := e.(map[string]any)
		if ev["type"] == "m.room.message" {
			out = append(out, ev["content"].(map[string]any)["body"].(string))
		}
	}
	return out
}

func createRoom(t testing.TB, c *testutil.Client, body map[string]any) string {
	t.Helper()
	r := c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body)
	return r.JSON["room_id"].(string)
}

func send(t testing.TB, c *testutil.Client, roomID, body string) string {
	t.Helper()
	r := c.MustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+fmt.Sprint(time.Now().UnixNano()),
		map[string]any{"msgtype": "m.text", "body": body})
	return r.JSON["event_id"].(string)
}

func TestInitialAndIncrementalSync(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Chat"})
		send(t, alice, roomID, "hello")

		as := &syncer{c: alice}
		resp := as.sync(t, "")
		if got := timelineBodies(resp, roomID); len(got) != 1 || got[0] != "hello" {
			t.Fatalf("initial timeline: %v", got)
		}
		// With a short timeline, the state section holds the room's state
		// before it.
		resp = (&syncer{c: alice}).sync(t, "timeout=0&filter="+url.QueryEscape(`{"room":{"timeline":{"limit":1}}}`))
		state, _ := dig(resp, "rooms", "join", roomID, "state", "events").([]any)
		types := map[string]bool{}
		for _, e := range state {
			types[e.(map[string]any)["type"].(string)] = true
		}
		for _, typ := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules"} {
			if !types[typ] {
				t.Errorf("initial state lacks %s: %v", typ, types)
			}
		}
		if dig(resp, "rooms", "join", roomID, "summary", "m.joined_member_count") != float64(1) {
			t.Errorf("summary: %v", dig(resp, "rooms", "join", roomID, "summary"))
		}
		// Nothing new: an incremental sync has no rooms.
		resp = as.sync(t, "")
		if dig(resp, "rooms", "join", roomID) != nil {
			t.Fatalf("empty incremental sync has the room: %v", resp["rooms"])
		}
		// Bob joins and talks; the long-poll wakes for it.
		done := make(chan map[string]any)
		go func() {
			done <- as.sync(t, "timeout=10000")
		}()
		time.Sleep(100 * time.Millisecond)
		bob.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		resp = <-done
		evs, _ := dig(resp, "rooms", "join", roomID, "timeline", "events").([]any)
		if len(evs) == 0 {
			t.Fatalf("long-poll returned without bob's join: %v", resp)
		}
		send(t, bob, roomID, "hi alice")
		resp = as.sync(t, "timeout=10000")
		if got := timelineBodies(resp, roomID); len(got) != 1 || got[0] != "hi alice" {
			t.Fatalf("incremental timeline: %v", got)
		}
		if dig(resp, "rooms", "join", roomID, "timeline", "limited") != false {
			t.Errorf("limited should be false")
		}
		// Tokens survive a restart of the client: using an old token again gives the same events.
		bs := &syncer{c: bob}
		bs.sync(t, "")
		if _, err := json.Marshal(resp); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLimitedTimelineAndPrevBatchContinuity(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "private_chat"})
		as := &syncer{c: alice}
		as.sync(t, "")
		for i := 0; i < 15; i++ {
			send(t, alice, roomID, fmt.Sprint("m", i))
		}
		filter := url.QueryEscape(`{"room":{"timeline":{"limit":5}}}`)
		resp := as.sync(t, "timeout=0&filter="+filter)
		got := timelineBodies(resp, roomID)
		if fmt.Sprint(got) != "[m10 m11 m12 m13 m14]" {
			t.Fatalf("limited timeline: %v", got)
		}
		if dig(resp, "rooms", "join", roomID, "timeline", "limited") != true {
			t.Fatalf("limited flag not set")
		}
		prev := dig(resp, "rooms", "join", roomID, "timeline", "prev_batch").(string)
		r := alice.MustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=10&from="+url.QueryEscape(prev), nil)
		var bodies []string
		for _, e := range r.JSON["chunk"].([]any) {
			ev := e.(map[string]any)
			if ev["type"] == "m.room.message" {
				bodies = append(bodies, ev["content"].(map[string]any)["body"].(string))
			}
		}
		if fmt.Sprint(bodies) != "[m9 m8 m7 m6 m5 m4 m3 m2 m1 m0]" {
			t.Fatalf("messages from prev_batch: %v", bodies)
		}
	})
}

func TestSyncFilters(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		room1 := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		room2 := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		for _, c := range []*testutil.Client{bob, carol} {
			c.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room1), map[string]any{})
		}
		send(t, bob, room1, "from bob")
		send(t, carol, room1, "from carol")
		alice.MustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room1)+"/send/m.reaction/r1",
			map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}})
		alice.MustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.test", map[string]any{"a": 1})
		alice.MustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.other", map[string]any{"b": 2})

		initial := func(filter string) map[string]any {
			s := &syncer{c: alice}
			return s.sync(t, "timeout=0&filter="+url.QueryEscape(filter))
		}
		// types / not_types
		resp := initial(`{"room":{"timeline":{"types":["m.room.message"]}}}`)
		for _, e := range dig(resp, "rooms", "join", room1, "timeline", "events").([]any) {
			if e.(map[string]any)["type"] != "m.room.message" {
				t.Errorf("types filter let %v through", e.(map[string]any)["type"])
			}
		}
		resp = initial(`{"room":{"timeline":{"not_types":["m.room.*"]}}}`)
		evs := dig(resp, "rooms", "join", room1, "timeline", "events").([]any)
		if len(evs) != 1 || evs[0].(map[string]any)["type"] != "m.reaction" {
			t.Errorf("not_types: %v", evs)
		}
		// senders / not_senders
		resp = initial(`{"room":{"timeline":{"senders":["` + bob.UserID + `"]}}}`)
		if got := timelineBodies(resp, room1); fmt.Sprint(got) != "[from bob]" {
			t.Errorf("senders: %v", got)
		}
		resp = initial(`{"room":{"timeline":{"not_senders":["` + bob.UserID + `"],"types":["m.room.message"]}}}`)
		if got := timelineBodies(resp, room1); fmt.Sprint(got) != "[from carol]" {
			t.Errorf("not_senders: %v", got)
		}
		// room filter: rooms / not_rooms
		resp = initial(`{"room":{"rooms":["` + room2 + `"]}}`)
		if dig(resp, "rooms", "join", room1) != nil || dig(resp, "rooms", "join", room2) == nil {
			t.Errorf("rooms filter: %v", dig(resp, "rooms", "join"))
		}
		resp = initial(`{"room":{"not_rooms":["` + room2 + `"]}}`)
		if dig(resp, "rooms", "join", room2) != nil || dig(resp, "rooms", "join", room1) == nil {
			t.Errorf("not_rooms filter")
		}
		// state types
		resp = initial(`{"room":{"state":{"types":["m.room.create"]},"timeline":{"limit":1}}}`)
		for _, e := range dig(resp, "rooms", "join", room1, "state", "events").([]any) {
			if e.(map[string]any)["type"] != "m.room.create" {
				t.Errorf("state filter let %v through", e.(map[string]any)["type"])
			}
		}
		// lazy loading: only the timeline senders' members (and our own).
		resp = initial(`{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":1,"types":["m.room.message"]}}}`)
		members := map[string]bool{}
		for _, e := range dig(resp, "rooms", "join", room1, "state", "events").([]any) {
			ev := e.(map[string]any)
			if ev["type"] == "m.room.member" {
				members[ev["state_key"].(string)] = true
			}
		}
		if !members[carol.UserID] || members[bob.UserID] {
			t.Errorf("lazy-loaded members: %v", members)
		}
		// account data filter
		resp = initial(`{"account_data":{"types":["m.test"]}}`)
		ad := dig(resp, "account_data", "events").([]any)
		if len(ad) != 1 || ad[0].(map[string]any)["type"] != "m.test" {
			t.Errorf("account data filter: %v", ad)
		}
		// event_fields
		resp = initial(`{"event_fields":["type","content.body"],"room":{"timeline":{"types":["m.room.message"],"limit":1}}}`)
		ev := dig(resp, "rooms", "join", room1, "timeline", "events").([]any)[0].(map[string]any)
		if len(ev) != 2 || ev["content"].(map[string]any)["body"] != "from carol" || len(ev["content"].(map[string]any)) != 1 {
			t.Errorf("event_fields: %v", ev)
		}
		// A stored filter by ID.
		r := alice.MustDo(200, "POST", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/filter", map[string]any{"room": map[string]any{"rooms": []string{room2}}})
		s := &syncer{c: alice}
		resp = s.sync(t, "timeout=0&filter="+r.JSON["filter_id"].(string))
		if dig(resp, "rooms", "join", room1) != nil {
			t.Errorf("stored filter not applied")
		}
		// Bad filters.
		if r := alice.Do("GET", "/_matrix/client/v3/sync?filter=999", nil); r.Status != 404 {
			t.Errorf("unknown filter ID: %d", r.Status)
		}
		if r := alice.Do("GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"timeline":{"limit":"x"}}}`), nil); r.Status != 400 {
			t.Errorf("bad inline filter: %d", r.Status)
		}
		if r := alice.Do("GET", "/_matrix/client/v3/sync?since=garbage", nil); r.Status != 400 || r.ErrCode() != "M_INVALID_PARAM" {
			t.Errorf("bad since: %d %s", r.Status, r.Body)
		}
	})
}

func TestInviteLeaveRejoin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Secret"})
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		bs := &syncer{c: bob}
		bs.sync(t, "")
		alice.MustDo(200, "POST", rp+"/invite", map[string]any{"user_id": bob.UserID})
		resp := bs.sync(t, "")
		inv, _ := dig(resp, "rooms", "invite", roomID, "invite_state", "events").([]any)
		names := false
		for _, e := range inv {
			names = names || e.(map[string]any)["type"] == "m.room.name"
		}
		if !names {
			t.Fatalf("invite without stripped state: %v", resp["rooms"])
		}
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		resp = bs.sync(t, "")
		if dig(resp, "rooms", "join", roomID, "state") == nil {
			t.Fatalf("newly joined room not sent in full: %v", resp["rooms"])
		}
		send(t, alice, roomID, "before leave")
		bob.MustDo(200, "POST", rp+"/leave", map[string]any{})
		send(t, alice, roomID, "after leave")
		resp = bs.sync(t, "")
		left := dig(resp, "rooms", "leave", roomID)
		if left == nil {
			t.Fatalf("room not in leave section: %v", resp["rooms"])
		}
		evs := dig(resp, "rooms", "leave", roomID, "timeline", "events").([]any)
		for _, e := range evs {
			if c, _ := e.(map[string]any)["content"].(map[string]any); c["body"] == "after leave" {
				t.Fatalf("left user sees a message sent after the leave")
			}
		}
		// Nothing more reaches bob from the room.
		send(t, alice, roomID, "still going")
		resp = bs.sync(t, "")
		if dig(resp, "rooms", "leave", roomID) != nil || dig(resp, "rooms", "join", roomID) != nil {
			t.Fatalf("events after leave reach bob: %v", resp["rooms"])
		}
		// include_leave shows the left room in an initial sync.
		s2 := &syncer{c: bob}
		resp = s2.sync(t, "timeout=0&filter="+url.QueryEscape(`{"room":{"include_leave":true}}`))
		if dig(resp, "rooms", "leave", roomID) == nil {
			t.Fatalf("include_leave: %v", resp["rooms"])
		}
		// Rejoin: invited again, joins, sees the room in full.
		alice.MustDo(200, "POST", rp+"/invite", map[string]any{"user_id": bob.UserID})
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		resp = bs.sync(t, "")
		if dig(resp, "rooms", "join", roomID, "state") == nil || dig(resp, "rooms", "leave", roomID) != nil {
			t.Fatalf("rejoin: %v", resp["rooms"])
		}
		// Kick then ban: the room goes to leave with the ban as last event.
		alice.MustDo(200, "POST", rp+"/ban", map[string]any{"user_id": bob.UserID})
		resp = bs.sync(t, "")
		evs = dig(resp, "rooms", "leave", roomID, "timeline", "events").([]any)
		last := evs[len(evs)-1].(map[string]any)
		if last["type"] != "m.room.member" || last["content"].(map[string]any)["membership"] != "ban" {
			t.Fatalf("ban not last in leave timeline: %v", last)
		}
	})
}

func TestTypingReceiptsAndReadMarkers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		eventID := send(t, bob, roomID, "read me")
		as := &syncer{c: alice}
		as.sync(t, "")

		bob.MustDo(200, "PUT", rp+"/typing/"+url.PathEscape(bob.UserID), map[string]any{"typing": true, "timeout": 300})
		resp := as.sync(t, "timeout=5000")
		typing := ephemeral(resp, roomID, "m.typing")
		if typing == nil || fmt.Sprint(typing["content"].(map[string]any)["user_ids"]) != "["+bob.UserID+"]" {
			t.Fatalf("typing: %v", resp["rooms"])
		}
		// The timeout expires: the next sync says nobody is typing.
		resp = as.sync(t, "timeout=5000")
		typing = ephemeral(resp, roomID, "m.typing")
		if typing == nil || len(typing["content"].(map[string]any)["user_ids"].([]any)) != 0 {
			t.Fatalf("typing did not time out: %v", resp["rooms"])
		}
		if r := alice.Do("PUT", rp+"/typing/"+url.PathEscape(bob.UserID), map[string]any{"typing": true}); r.Status != 403 {
			t.Errorf("typing for someone else: %d", r.Status)
		}

		// A private receipt reaches only its owner.
		bs := &syncer{c: bob}
		bs.sync(t, "")
		alice.MustDo(200, "POST", rp+"/receipt/m.read.private/"+url.PathEscape(eventID), map[string]any{})
		resp = bs.sync(t, "")
		if ephemeral(resp, roomID, "m.receipt") != nil {
			t.Fatalf("bob sees alice's private receipt")
		}
		resp = as.sync(t, "")
		rc := ephemeral(resp, roomID, "m.receipt")
		if rc == nil || dig(rc, "content", eventID, "m.read.private", alice.UserID) == nil {
			t.Fatalf("alice's own private receipt missing: %v", rc)
		}
		// A public receipt with a thread reaches everyone.
		alice.MustDo(200, "POST", rp+"/receipt/m.read/"+url.PathEscape(eventID), map[string]any{"thread_id": "main"})
		resp = bs.sync(t, "timeout=5000")
		rc = ephemeral(resp, roomID, "m.receipt")
		if rc == nil || dig(rc, "content", eventID, "m.read", alice.UserID, "thread_id") != "main" {
			t.Fatalf("public threaded receipt: %v", rc)
		}
		// Read markers set m.fully_read room account data.
		alice.MustDo(200, "POST", rp+"/read_markers", map[string]any{"m.fully_read": eventID, "m.read": eventID})
		resp = as.sync(t, "")
		ad, _ := dig(resp, "rooms", "join", roomID, "account_data", "events").([]any)
		found := false
		for _, e := range ad {
			ev := e.(map[string]any)
			found = found || (ev["type"] == "m.fully_read" && ev["content"].(map[string]any)["event_id"] == eventID)
		}
		if !found {
			t.Fatalf("m.fully_read not in room account data: %v", resp["rooms"])
		}
		// Errors.
		if r := alice.Do("POST", rp+"/receipt/m.bogus/"+url.PathEscape(eventID), map[string]any{}); r.Status != 400 {
			t.Errorf("bad receipt type: %d", r.Status)
		}
		if r := alice.Do("POST", rp+"/receipt/m.read/$nope", map[string]any{}); r.Status != 404 {
			t.Errorf("receipt for unknown event: %d", r.Status)
		}
		outsider := srv.NewUser(t, "eve", "pw")
		if r := outsider.Do("POST", rp+"/receipt/m.read/"+url.PathEscape(eventID), map[string]any{}); r.Status != 403 {
			t.Errorf("receipt by non-member: %d", r.Status)
		}
	})
}

func ephemeral(resp map[string]any, roomID, typ string) map[string]any {
	evs, _ := dig(resp, "rooms", "join", roomID, "ephemeral", "events").([]any)
	for _, e := range evs {
		if ev := e.(map[string]any); ev["type"] == typ {
			return ev
		}
	}
	return nil
}

func TestPresence(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		eve := srv.NewUser(t, "eve", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		bob.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		bs := &syncer{c: bob}
		bs.sync(t, "")
		alice.MustDo(200, "PUT", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", map[string]any{"presence": "unavailable", "status_msg": "lunch"})
		resp := bs.sync(t, "timeout=5000&set_presence=offline")
		evs, _ := dig(resp, "presence", "events").([]any)
		found := false
		for _, e := range evs {
			ev := e.(map[string]any)
			if ev["sender"] == alice.UserID {
				found = true
				if dig(ev, "content", "presence") != "unavailable" || dig(ev, "content", "status_msg") != "lunch" {
					t.Errorf("presence content: %v", ev)
				}
			}
		}
		if !found {
			t.Fatalf("presence not delivered: %v", resp)
		}
		r := bob.MustDo(200, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", nil)
		if r.JSON["presence"] != "unavailable" || r.JSON["status_msg"] != "lunch" {
			t.Errorf("GET presence: %s", r.Body)
		}
		// Syncing with set_presence=online makes alice online.
		as := &syncer{c: alice}
		as.sync(t, "timeout=0&set_presence=online")
		r = bob.MustDo(200, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", nil)
		if r.JSON["presence"] != "online" || r.JSON["currently_active"] != true {
			t.Errorf("presence after sync: %s", r.Body)
		}
		// Eve shares no room with alice.
		if r := eve.Do("GET", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", nil); r.Status != 403 {
			t.Errorf("presence of a stranger: %d", r.Status)
		}
		if r := alice.Do("PUT", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", map[string]any{"presence": "dancing"}); r.Status != 400 {
			t.Errorf("bad presence: %d", r.Status)
		}
		if r := alice.Do("PUT", "/_matrix/client/v3/presence/"+url.PathEscape(bob.UserID)+"/status", map[string]any{"presence": "online"}); r.Status != 403 {
			t.Errorf("presence for another: %d", r.Status)
		}
	})
}

func TestSyncFormatsAndStateAfter(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "First"})
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		alice.MustDo(200, "PUT", rp+"/send/m.room.message/u1", map[string]any{"msgtype": "m.image", "body": "pic", "url": "mxc://x/y"})
		send(t, alice, roomID, "plain")
		initial := func(c *testutil.Client, filter string) map[string]any {
			return (&syncer{c: c}).sync(t, "timeout=0&filter="+url.QueryEscape(filter))
		}
		// contains_url
		resp := initial(alice, `{"room":{"timeline":{"contains_url":true}}}`)
		if got := timelineBodies(resp, roomID); fmt.Sprint(got) != "[pic]" {
			t.Errorf("contains_url true: %v", got)
		}
		resp = initial(alice, `{"room":{"timeline":{"contains_url":false,"types":["m.room.message"]}}}`)
		if got := timelineBodies(resp, roomID); fmt.Sprint(got) != "[plain]" {
			t.Errorf("contains_url false: %v", got)
		}
		// event_format federation: events as servers see them.
		resp = initial(alice, `{"event_format":"federation","room":{"timeline":{"limit":1}}}`)
		ev := dig(resp, "rooms", "join", roomID, "timeline", "events").([]any)[0].(map[string]any)
		if ev["signatures"] == nil || ev["hashes"] == nil || ev["auth_events"] == nil {
			t.Errorf("federation format lacks signatures/hashes/auth_events: %v", ev)
		}
		// ephemeral filter: receipts only.
		eventID := send(t, bob, roomID, "read me")
		alice.MustDo(200, "POST", rp+"/receipt/m.read/"+url.PathEscape(eventID), map[string]any{})
		bob.MustDo(200, "PUT", rp+"/typing/"+url.PathEscape(bob.UserID), map[string]any{"typing": true, "timeout": 30000})
		resp = initial(alice, `{"room":{"ephemeral":{"types":["m.receipt"]}}}`)
		if ephemeral(resp, roomID, "m.typing") != nil || ephemeral(resp, roomID, "m.receipt") == nil {
			t.Errorf("ephemeral filter: %v", dig(resp, "rooms", "join", roomID, "ephemeral"))
		}
		resp = initial(alice, `{"room":{"ephemeral":{"not_types":["m.receipt"]}}}`)
		if ephemeral(resp, roomID, "m.typing") == nil || ephemeral(resp, roomID, "m.receipt") != nil {
			t.Errorf("ephemeral not_types: %v", dig(resp, "rooms", "join", roomID, "ephemeral"))
		}
		// use_state_after: the state at the end of the timeline, including
		// state events in the timeline.
		as := &syncer{c: alice}
		as.sync(t, "timeout=0")
		alice.MustDo(200, "PUT", rp+"/state/m.room.name/", map[string]any{"name": "Second"})
		resp = as.sync(t, "timeout=0&use_state_after=true")
		after, _ := dig(resp, "rooms", "join", roomID, "state_after", "events").([]any)
		found := false
		for _, e := range after {
			ev := e.(map[string]any)
			found = found || (ev["type"] == "m.room.name" && dig(ev, "content", "name") == "Second")
		}
		if !found || dig(resp, "rooms", "join", roomID, "state") != nil {
			t.Errorf("use_state_after: %v", dig(resp, "rooms", "join", roomID))
		}
	})
}

// TestLeaveAndRejoinBetweenSyncs: a user who leaves and rejoins between two
// syncs gets the room in full in the join section, not in leave.
func TestLeaveAndRejoinBetweenSyncs(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		bs := &syncer{c: bob}
		bs.sync(t, "")
		bob.MustDo(200, "POST", rp+"/leave", map[string]any{})
		send(t, alice, roomID, "while away")
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		resp := bs.sync(t, "timeout=0&filter="+url.QueryEscape(`{"room":{"timeline":{"limit":1}}}`))
		if dig(resp, "rooms", "leave", roomID) != nil {
			t.Fatalf("rejoined room in leave section")
		}
		state, _ := dig(resp, "rooms", "join", roomID, "state", "events").([]any)
		if len(state) < 4 {
			t.Fatalf("rejoined room not sent with full state: %d state events", len(state))
		}
	})
}

func TestIgnoredUsersAndNewlyJoinedRooms(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		eve := srv.NewUser(t, "eve", "pw")
		alice.MustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.ignored_user_list",
			map[string]any{"ignored_users": map[string]any{eve.UserID: map[string]any{}}})
		as := &syncer{c: alice}
		as.sync(t, "timeout=0&set_presence=offline")
		// An invite from an ignored user is not shown.
		spam := createRoom(t, eve, map[string]any{"preset": "private_chat"})
		eve.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(spam)+"/invite", map[string]any{"user_id": alice.UserID})
		// Bob's room: alice joins it; eve talks there too.
		roomID := createRoom(t, bob, map[string]any{"preset": "public_chat"})
		bs := &syncer{c: bob}
		bs.sync(t, "timeout=0") // bob is online
		eve.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		send(t, eve, roomID, "spam")
		send(t, bob, roomID, "hello")
		alice.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		resp := as.sync(t, "timeout=0&set_presence=offline")
		if dig(resp, "rooms", "invite", spam) != nil {
			t.Errorf("invite from an ignored user shown")
		}
		if got := timelineBodies(resp, roomID); fmt.Sprint(got) != "[hello]" {
			t.Errorf("timeline with an ignored sender: %v", got)
		}
		// A newly joined room is flagged limited, and bob's presence comes along.
		if dig(resp, "rooms", "join", roomID, "timeline", "limited") != true {
			t.Errorf("newly joined room not limited")
		}
		found := false
		evs, _ := dig(resp, "presence", "events").([]any)
		for _, e := range evs {
			found = found || e.(map[string]any)["sender"] == bob.UserID
		}
		if !found {
			t.Errorf("no presence of the members of a newly joined room: %v", resp["presence"])
		}
		// And bob learns alice's presence when she joins his room.
		alice.MustDo(200, "PUT", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", map[string]any{"presence": "online"})
		resp = bs.sync(t, "timeout=0")
		found = false
		evs, _ = dig(resp, "presence", "events").([]any)
		for _, e := range evs {
			found = found || e.(map[string]any)["sender"] == alice.UserID
		}
		if !found {
			t.Errorf("bob has no presence for alice who joined: %v", resp["presence"])
		}
	})
}

// TestPresenceTimeouts: a user who stops syncing goes offline; an online
// user idle for long becomes unavailable.
func TestPresenceTimeouts(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		bob.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		status := func() string {
			r := bob.MustDo(200, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", nil)
			return r.JSON["presence"].(string)
		}
		(&syncer{c: alice}).sync(t, "timeout=0&set_presence=online")
		if got := status(); got != "online" {
			t.Fatalf("after syncing: %s", got)
		}
		ctx := context.Background()
		// Still syncing, but idle for more than five minutes: unavailable.
		srv.Sync.ExpirePresence(ctx, time.Now().Add(10*time.Second))
		if got := status(); got != "online" {
			t.Fatalf("10 s later: %s", got)
		}
		srv.Sync.ExpirePresence(ctx, time.Now().Add(6*time.Minute))
		if got := status(); got != "offline" && got != "unavailable" {
			t.Fatalf("6 min later: %s", got)
		}
		// A sync brings her back online; then she stops syncing: offline.
		(&syncer{c: alice}).sync(t, "timeout=0&set_presence=online")
		if got := status(); got != "online" {
			t.Fatalf("after syncing again: %s", got)
		}
		srv.Sync.ExpirePresence(ctx, time.Now().Add(time.Minute))
		if got := status(); got != "offline" {
			t.Fatalf("a minute after the last sync: %s", got)
		}
	})
}
