package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

const (
	dirAliasPath   = "/_matrix/client/v3/directory/room/"
	dirListPath    = "/_matrix/client/v3/directory/list/room/"
	dirPublicRooms = "/_matrix/client/v3/publicRooms"
)

// dirRoom is a room created for a directory test.
type dirRoom struct {
	id   string
	path string // /_matrix/client/v3/rooms/{id}
}

// dirCreateRoom creates a room with the given /createRoom body.
func dirCreateRoom(t *testing.T, c *testutil.Client, body map[string]any) *dirRoom {
	t.Helper()
	r := c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body)
	id, _ := r.JSON["room_id"].(string)
	if id == "" {
		t.Fatalf("createRoom: %s", r.Body)
	}
	return &dirRoom{id: id, path: "/_matrix/client/v3/rooms/" + url.PathEscape(id)}
}

// dirExpect fails unless r is the Matrix error status/errcode.
func dirExpect(t *testing.T, what string, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("%s: got %d %s, want %d %s", what, r.Status, r.Body, status, errcode)
	}
}

// dirAdmin creates a server admin and logs it in over HTTP.
func dirAdmin(t *testing.T, srv *testutil.Server, localpart string) *testutil.Client {
	t.Helper()
	if _, err := srv.Accounts.CreateUser(context.Background(), localpart, "adminpw", true, false); err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	r := c.MustDo(200, "POST", "/_matrix/client/v3/login", map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": localpart}, "password": "adminpw",
	})
	c.AccessToken, _ = r.JSON["access_token"].(string)
	c.UserID, _ = r.JSON["user_id"].(string)
	return c
}

// dirState reads a state event's content.
func dirState(t *testing.T, c *testutil.Client, rm *dirRoom, typ, key string) map[string]any {
	t.Helper()
	return c.MustDo(200, "GET", rm.path+"/state/"+typ+"/"+url.PathEscape(key), nil).JSON
}

func dirAlias(srv *testutil.Server, local string) string {
	return "#" + local + ":" + srv.Config.ServerName
}

func TestRoomAliases(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		admin := dirAdmin(t, srv, "admin")
		rm := dirCreateRoom(t, alice, map[string]any{"preset": "public_chat"})
		bob.MustDo(200, "POST", rm.path+"/join", map[string]any{})
		alias := dirAlias(srv, "cheese")
		ap := dirAliasPath + url.PathEscape(alias)

		// PUT errors.
		body := map[string]any{"room_id": rm.id}
		dirExpect(t, "no token", srv.Client(t).Do("PUT", ap, body), 401, "M_MISSING_TOKEN")
		dirExpect(t, "no sigil", alice.Do("PUT", dirAliasPath+"cheese", body), 400, "M_INVALID_PARAM")
		dirExpect(t, "no server", alice.Do("PUT", dirAliasPath+url.PathEscape("#cheese"), body), 400, "M_INVALID_PARAM")
		dirExpect(t, "remote alias", alice.Do("PUT", dirAliasPath+url.PathEscape("#cheese:elsewhere.example"), body), 400, "M_INVALID_PARAM")
		dirExpect(t, "whitespace", alice.Do("PUT", dirAliasPath+url.PathEscape(dirAlias(srv, "a b")), body), 400, "M_INVALID_PARAM")
		dirExpect(t, "not JSON", alice.Do("PUT", ap, "nope"), 400, "M_NOT_JSON")
		dirExpect(t, "no room_id", alice.Do("PUT", ap, map[string]any{}), 400, "M_MISSING_PARAM")
		dirExpect(t, "bad room_id", alice.Do("PUT", ap, map[string]any{"room_id": "nope"}), 400, "M_INVALID_PARAM")
		dirExpect(t, "unknown room", alice.Do("PUT", ap, map[string]any{"room_id": "!nope:" + srv.Config.ServerName}), 404, "M_NOT_FOUND")
		dirExpect(t, "non-member", carol.Do("PUT", ap, body), 403, "M_FORBIDDEN")

		// GET before and after.
		dirExpect(t, "unknown alias", srv.Client(t).Do("GET", ap, nil), 404, "M_NOT_FOUND")
		alice.MustDo(200, "PUT", ap, body)
		dirExpect(t, "existing alias", bob.Do("PUT", ap, body), 409, "M_UNKNOWN")
		r := srv.Client(t).MustDo(200, "GET", ap, nil) // no token needed
		if r.JSON["room_id"] != rm.id || fmt.Sprint(r.JSON["servers"]) != fmt.Sprint([]any{srv.Config.ServerName}) {
			t.Fatalf("GET alias: %s", r.Body)
		}
		// Asked over federation; elsewhere.example never resolves.
		dirExpect(t, "GET remote alias, server unreachable", alice.Do("GET", dirAliasPath+url.PathEscape("#x:elsewhere.example"), nil), 502, "M_UNKNOWN")
		dirExpect(t, "GET bad alias", alice.Do("GET", dirAliasPath+"x", nil), 400, "M_INVALID_PARAM")
		// A server admin needs no membership; a member with power 0 may add aliases too.
		adminAlias := dirAlias(srv, "by-admin")
		admin.MustDo(200, "PUT", dirAliasPath+url.PathEscape(adminAlias), body)
		bobAlias := dirAlias(srv, "by-bob")
		bob.MustDo(200, "PUT", dirAliasPath+url.PathEscape(bobAlias), body)

		// GET /rooms/{roomId}/aliases: members and admins only.
		r = bob.MustDo(200, "GET", rm.path+"/aliases", nil)
		got := fmt.Sprint(r.JSON["aliases"])
		want := []string{adminAlias, bobAlias, alias}
		slices.Sort(want)
		if got != fmt.Sprint(want) {
			t.Fatalf("aliases = %s, want %v", got, want)
		}
		dirExpect(t, "aliases of non-member", carol.Do("GET", rm.path+"/aliases", nil), 403, "M_FORBIDDEN")
		dirExpect(t, "aliases of unknown room", carol.Do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape("!x:y")+"/aliases", nil), 403, "M_FORBIDDEN")
		dirExpect(t, "aliases bad room ID", carol.Do("GET", "/_matrix/client/v3/rooms/x/aliases", nil), 400, "M_INVALID_PARAM")
		admin.MustDo(200, "GET", rm.path+"/aliases", nil)
		// World-readable rooms show their aliases to anyone.
		alice.MustDo(200, "PUT", rm.path+"/state/m.room.history_visibility/", map[string]any{"history_visibility": "world_readable"})
		carol.MustDo(200, "GET", rm.path+"/aliases", nil)

		// DELETE: the creator of the alias, a member with power to set the
		// canonical alias, or a server admin.
		dirExpect(t, "delete unknown", alice.Do("DELETE", dirAliasPath+url.PathEscape(dirAlias(srv, "nope")), nil), 404, "M_NOT_FOUND")
		dirExpect(t, "delete bad alias", alice.Do("DELETE", dirAliasPath+"nope", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "bob deletes alice's alias", bob.Do("DELETE", ap, nil), 403, "M_FORBIDDEN")
		dirExpect(t, "carol deletes alice's alias", carol.Do("DELETE", ap, nil), 403, "M_FORBIDDEN")
		bob.MustDo(200, "DELETE", dirAliasPath+url.PathEscape(bobAlias), nil)
		admin.MustDo(200, "DELETE", dirAliasPath+url.PathEscape(adminAlias), nil)
		dirExpect(t, "deleted alias", alice.Do("GET", dirAliasPath+url.PathEscape(bobAlias), nil), 404, "M_NOT_FOUND")

		// Deleting the canonical alias updates m.room.canonical_alias.
		alt := dirAlias(srv, "alt")
		bob.MustDo(200, "PUT", dirAliasPath+url.PathEscape(alt), body)
		alice.MustDo(200, "PUT", rm.path+"/state/m.room.canonical_alias/", map[string]any{"alias": alias, "alt_aliases": []string{alt}})
		alice.MustDo(200, "DELETE", ap, nil) // her own alias
		ca := dirState(t, alice, rm, "m.room.canonical_alias", "")
		if _, ok := ca["alias"]; ok || fmt.Sprint(ca["alt_aliases"]) != fmt.Sprint([]any{alt}) {
			t.Fatalf("canonical alias after deleting it: %v", ca)
		}
		alice.MustDo(200, "DELETE", dirAliasPath+url.PathEscape(alt), nil) // room admin deletes bob's alias
		ca = dirState(t, alice, rm, "m.room.canonical_alias", "")
		if len(ca) != 0 {
			t.Fatalf("canonical alias after deleting the alt alias: %v", ca)
		}
		r = alice.MustDo(200, "GET", rm.path+"/aliases", nil)
		if len(r.JSON["aliases"].([]any)) != 0 {
			t.Fatalf("aliases left: %s", r.Body)
		}
	})
}

func TestRoomDirectoryVisibility(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		admin := dirAdmin(t, srv, "admin")
		rm := dirCreateRoom(t, alice, map[string]any{"preset": "public_chat"})
		bob.MustDo(200, "POST", rm.path+"/join", map[string]any{})
		lp := dirListPath + url.PathEscape(rm.id)
		visibility := func() string {
			t.Helper()
			return srv.Client(t).MustDo(200, "GET", lp, nil).JSON["visibility"].(string)
		}
		if v := visibility(); v != "private" {
			t.Fatalf("new room visibility %q", v)
		}
		unknown := dirListPath + url.PathEscape("!nope:"+srv.Config.ServerName)
		dirExpect(t, "GET unknown room", srv.Client(t).Do("GET", unknown, nil), 404, "M_NOT_FOUND")
		dirExpect(t, "GET bad room ID", srv.Client(t).Do("GET", dirListPath+"x", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "PUT unknown room", alice.Do("PUT", unknown, map[string]any{"visibility": "public"}), 404, "M_NOT_FOUND")
		dirExpect(t, "PUT bad visibility", alice.Do("PUT", lp, map[string]any{"visibility": "secret"}), 400, "M_INVALID_PARAM")
		dirExpect(t, "PUT wrong type", alice.Do("PUT", lp, map[string]any{"visibility": 1}), 400, "M_BAD_JSON")
		dirExpect(t, "PUT no token", srv.Client(t).Do("PUT", lp, map[string]any{"visibility": "public"}), 401, "M_MISSING_TOKEN")
		dirExpect(t, "PUT non-member", carol.Do("PUT", lp, map[string]any{"visibility": "public"}), 403, "M_FORBIDDEN")
		dirExpect(t, "PUT without power", bob.Do("PUT", lp, map[string]any{"visibility": "public"}), 403, "M_FORBIDDEN")
		alice.MustDo(200, "PUT", lp, map[string]any{}) // visibility defaults to public
		if v := visibility(); v != "public" {
			t.Fatalf("visibility after publishing %q", v)
		}
		admin.MustDo(200, "PUT", lp, map[string]any{"visibility": "private"})
		if v := visibility(); v != "private" {
			t.Fatalf("visibility after unpublishing %q", v)
		}
		// createRoom with visibility public publishes the room.
		pub := dirCreateRoom(t, alice, map[string]any{"visibility": "public"})
		if v := srv.Client(t).MustDo(200, "GET", dirListPath+url.PathEscape(pub.id), nil).JSON["visibility"]; v != "public" {
			t.Fatalf("createRoom visibility public: %v", v)
		}
	})
}

// dirPage is a decoded /publicRooms answer.
type dirPage struct {
	Chunk     []map[string]any `json:"chunk"`
	NextBatch string           `json:"next_batch"`
	PrevBatch string           `json:"prev_batch"`
	Total     *int             `json:"total_room_count_estimate"`
}

func dirPublicRoomsPage(t *testing.T, r *testutil.Response) *dirPage {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("publicRooms: %d %s", r.Status, r.Body)
	}
	var p dirPage
	if err := json.Unmarshal(r.Body, &p); err != nil || p.Chunk == nil || p.Total == nil {
		t.Fatalf("publicRooms body %s: %v", r.Body, err)
	}
	return &p
}

func (p *dirPage) names() []string {
	var out []string
	for _, c := range p.Chunk {
		n, _ := c["name"].(string)
		out = append(out, n)
	}
	return out
}

func TestPublicRooms(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		var others []*testutil.Client
		for i := range 3 {
			others = append(others, srv.NewUser(t, fmt.Sprintf("u%d", i), "pw"))
		}
		// Rooms of 4, 3, 2 and 1 members, published; a space; rooms that
		// must not be listed.
		sizes := map[string]int{"Four": 4, "Three": 3, "Two": 2, "One": 1}
		rooms := map[string]*dirRoom{}
		for name, n := range sizes {
			rm := dirCreateRoom(t, alice, map[string]any{
				"visibility": "public", "name": name, "topic": "about " + name, "room_alias_name": "room" + name,
			})
			for _, u := range others[:n-1] {
				u.MustDo(200, "POST", rm.path+"/join", map[string]any{})
			}
			rooms[name] = rm
		}
		alice.MustDo(200, "PUT", rooms["Four"].path+"/state/m.room.avatar/", map[string]any{"url": "mxc://x/y"})
		alice.MustDo(200, "PUT", rooms["Four"].path+"/state/m.room.history_visibility/", map[string]any{"history_visibility": "world_readable"})
		alice.MustDo(200, "PUT", rooms["Four"].path+"/state/m.room.guest_access/", map[string]any{"guest_access": "can_join"})
		dirCreateRoom(t, alice, map[string]any{"visibility": "public", "name": "Space", "creation_content": map[string]any{"type": "m.space"}})
		dirCreateRoom(t, alice, map[string]any{"name": "Unpublished", "preset": "public_chat"})
		dirCreateRoom(t, alice, map[string]any{"visibility": "public", "preset": "private_chat", "name": "InviteOnly"})
		dirCreateRoom(t, alice, map[string]any{"visibility": "public", "preset": "private_chat", "name": "Readable",
			"initial_state": []map[string]any{{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}}}})

		anon := srv.Client(t)
		p := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms, nil)) // no token needed
		// One, Readable and Space have one member each: room ID order decides.
		if len(p.Chunk) != 6 || p.names()[0] != "Four" || p.names()[1] != "Three" || p.names()[2] != "Two" {
			t.Fatalf("public rooms: %v", p.names())
		}
		if *p.Total != 7 || p.NextBatch != "" || p.PrevBatch != "" {
			t.Fatalf("total %d next %q prev %q", *p.Total, p.NextBatch, p.PrevBatch)
		}
		four := p.Chunk[0]
		wantFour := map[string]any{
			"room_id": rooms["Four"].id, "name": "Four", "topic": "about Four", "canonical_alias": dirAlias(srv, "roomFour"),
			"num_joined_members": 4.0, "world_readable": true, "guest_can_join": true, "avatar_url": "mxc://x/y", "join_rule": "public",
		}
		if fmt.Sprint(four) != fmt.Sprint(wantFour) {
			t.Fatalf("entry:\n got %v\nwant %v", four, wantFour)
		}
		for _, c := range p.Chunk {
			if c["name"] == "Space" && c["room_type"] != "m.space" {
				t.Fatalf("space entry: %v", c)
			}
			if c["name"] == "Readable" && (c["join_rule"] != "invite" || c["world_readable"] != true) {
				t.Fatalf("readable entry: %v", c)
			}
		}

		// Pagination forwards and back, through GET and POST.
		p1 := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms+"?limit=2", nil))
		if fmt.Sprint(p1.names()) != "[Four Three]" || p1.NextBatch == "" || p1.PrevBatch != "" {
			t.Fatalf("page 1: %v next %q prev %q", p1.names(), p1.NextBatch, p1.PrevBatch)
		}
		p2 := dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"limit": 2, "since": p1.NextBatch}))
		if p2.names()[0] != "Two" || len(p2.Chunk) != 2 || p2.NextBatch == "" || p2.PrevBatch == "" {
			t.Fatalf("page 2: %v next %q prev %q", p2.names(), p2.NextBatch, p2.PrevBatch)
		}
		p3 := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms+"?limit=2&since="+url.QueryEscape(p2.NextBatch), nil))
		if len(p3.Chunk) != 2 || p3.NextBatch != "" || p3.PrevBatch == "" {
			t.Fatalf("page 3: %v next %q prev %q", p3.names(), p3.NextBatch, p3.PrevBatch)
		}
		back := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms+"?limit=2&since="+url.QueryEscape(p2.PrevBatch), nil))
		if fmt.Sprint(back.names()) != "[Four Three]" || back.PrevBatch != "" || back.NextBatch == "" {
			t.Fatalf("back from page 2: %v next %q prev %q", back.names(), back.NextBatch, back.PrevBatch)
		}
		again := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms+"?limit=2&since="+url.QueryEscape(back.NextBatch), nil))
		if fmt.Sprint(again.names()) != fmt.Sprint(p2.names()) {
			t.Fatalf("forward again: %v, want %v", again.names(), p2.names())
		}
		seen := append(append(p1.names(), p2.names()...), p3.names()...)
		slices.Sort(seen)
		if fmt.Sprint(seen) != "[Four One Readable Space Three Two]" {
			t.Fatalf("pages cover %v", seen)
		}

		// Filters.
		search := func(filter map[string]any) []string {
			t.Helper()
			return dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"filter": filter})).names()
		}
		if got := search(map[string]any{"generic_search_term": "THREE"}); fmt.Sprint(got) != "[Three]" {
			t.Fatalf("search by name: %v", got)
		}
		if got := search(map[string]any{"generic_search_term": "about tw"}); fmt.Sprint(got) != "[Two]" {
			t.Fatalf("search by topic: %v", got)
		}
		if got := search(map[string]any{"generic_search_term": "roomone"}); fmt.Sprint(got) != "[One]" {
			t.Fatalf("search by alias: %v", got)
		}
		if got := search(map[string]any{"room_types": []any{"m.space"}}); fmt.Sprint(got) != "[Space]" {
			t.Fatalf("room_types m.space: %v", got)
		}
		if got := search(map[string]any{"room_types": []any{nil}}); len(got) != 5 || slices.Contains(got, "Space") {
			t.Fatalf("room_types null: %v", got)
		}
		if got := search(map[string]any{"generic_search_term": "nothing matches this"}); len(got) != 0 {
			t.Fatalf("no match: %v", got)
		}
		// Search results paginate too.
		sp := dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"limit": 1, "filter": map[string]any{"generic_search_term": "about"}}))
		if fmt.Sprint(sp.names()) != "[Four]" || sp.NextBatch == "" {
			t.Fatalf("search page: %v %q", sp.names(), sp.NextBatch)
		}
		sp = dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"limit": 1, "since": sp.NextBatch, "filter": map[string]any{"generic_search_term": "about"}}))
		if fmt.Sprint(sp.names()) != "[Three]" {
			t.Fatalf("search page 2: %v", sp.names())
		}

		// Networks and servers.
		if got := dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"include_all_networks": true})); len(got.Chunk) != 6 {
			t.Fatalf("include_all_networks: %v", got.names())
		}
		if got := dirPublicRoomsPage(t, alice.Do("POST", dirPublicRooms, map[string]any{"third_party_instance_id": "irc"})); len(got.Chunk) != 0 {
			t.Fatalf("third-party network list: %v", got.names())
		}
		if got := dirPublicRoomsPage(t, anon.Do("GET", dirPublicRooms+"?server="+url.QueryEscape(srv.Config.ServerName), nil)); len(got.Chunk) != 6 {
			t.Fatalf("own server: %v", got.names())
		}
		dirExpect(t, "both network options", alice.Do("POST", dirPublicRooms, map[string]any{"include_all_networks": true, "third_party_instance_id": "irc"}), 400, "M_INVALID_PARAM")
		dirExpect(t, "remote server", anon.Do("GET", dirPublicRooms+"?server=elsewhere.example", nil), 502, "M_UNKNOWN")
		dirExpect(t, "bad server", alice.Do("POST", dirPublicRooms+"?server=bad%20name", map[string]any{}), 400, "M_INVALID_PARAM")
		dirExpect(t, "bad limit", anon.Do("GET", dirPublicRooms+"?limit=x", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "negative limit", alice.Do("POST", dirPublicRooms, map[string]any{"limit": -1}), 400, "M_INVALID_PARAM")
		dirExpect(t, "bad token", anon.Do("GET", dirPublicRooms+"?since=zzz", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "bad token room", anon.Do("GET", dirPublicRooms+"?since=n3_x", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "bad include_all_networks", anon.Do("GET", dirPublicRooms+"?include_all_networks=maybe", nil), 400, "M_INVALID_PARAM")
		dirExpect(t, "POST needs a token", anon.Do("POST", dirPublicRooms, map[string]any{}), 401, "M_MISSING_TOKEN")
		dirExpect(t, "POST not JSON", alice.Do("POST", dirPublicRooms, "x"), 400, "M_NOT_JSON")
		dirExpect(t, "POST bad filter", alice.Do("POST", dirPublicRooms, map[string]any{"filter": map[string]any{"room_types": "m.space"}}), 400, "M_BAD_JSON")
	})
}
