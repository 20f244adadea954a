package federation_test

import (
	"context"
	"encoding/json"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// TestFederatedJoin: a user of hs2 joins rooms of hs1 (room versions 10 and
// 12) by room ID with via; both servers then have the join and the room's
// state, and the joined user can send.
func TestFederatedJoin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice, bob := n.user("hs1", "alice"), n.user("hs2", "bob")
		for _, ver := range []string{"10", "12"} {
			t.Run("v"+ver, func(t *testing.T) {
				roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_version": ver, "name": "Lobby " + ver})
				res := joinVia(bob, roomID, "hs1")
				if res.Status != 200 || res.JSON["room_id"] != roomID {
					t.Fatalf("join: %d %s", res.Status, res.Body)
				}
				// hs2 has the room's state.
				if c := stateContent(bob, roomID, "m.room.create", ""); c == nil || (c["room_version"] != ver && ver != "1") {
					t.Fatalf("hs2 create event: %v", c)
				}
				if c := stateContent(bob, roomID, "m.room.name", ""); c == nil || c["name"] != "Lobby "+ver {
					t.Fatalf("hs2 room name: %v", c)
				}
				for _, u := range []string{alice.UserID, bob.UserID} {
					if m := membershipOf(bob, roomID, u); m != "join" {
						t.Fatalf("hs2: %s is %q", u, m)
					}
				}
				// hs1 has the join.
				if m := membershipOf(alice, roomID, bob.UserID); m != "join" {
					t.Fatalf("hs1: bob is %q", m)
				}
				joined := bob.MustDo(200, "GET", "/_matrix/client/v3/joined_rooms", nil).JSON["joined_rooms"]
				if !contains(toStrings(joined), roomID) {
					t.Fatalf("joined_rooms %v", joined)
				}
				sync := syncOnce(t, bob, "")
				state := eventTypes(dig(sync, "rooms", "join", roomID, "state", "events"))
				timeline := eventTypes(dig(sync, "rooms", "join", roomID, "timeline", "events"))
				if !contains(append(state, timeline...), "m.room.member/"+bob.UserID) || !contains(append(state, timeline...), "m.room.create/") {
					t.Fatalf("sync state %v timeline %v", state, timeline)
				}
				bob.MustDo(200, "PUT", roomPath(roomID)+"/send/m.room.message/t"+ver, map[string]any{"msgtype": "m.text", "body": "hello from hs2"})
				// Joining again changes nothing.
				if res := joinVia(bob, roomID, "hs1"); res.Status != 200 {
					t.Fatalf("second join: %d %s", res.Status, res.Body)
				}
			})
		}
		t.Run("by alias", func(t *testing.T) {
			roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_alias_name": "lobby"})
			res := joinVia(bob, "#lobby:hs1")
			if res.Status != 200 || res.JSON["room_id"] != roomID {
				t.Fatalf("join by alias: %d %s", res.Status, res.Body)
			}
			if m := membershipOf(alice, roomID, bob.UserID); m != "join" {
				t.Fatalf("hs1: bob is %q", m)
			}
			res = joinVia(bob, "#nowhere:hs1")
			if res.Status != 404 || res.ErrCode() != "M_NOT_FOUND" {
				t.Fatalf("unknown alias: %d %s", res.Status, res.Body)
			}
		})
		t.Run("unknown rooms", func(t *testing.T) {
			res := joinVia(bob, "!unknown:hs1", "hs1")
			if res.Status != 404 || res.ErrCode() != "M_NOT_FOUND" {
				t.Fatalf("unknown room of hs1: %d %s", res.Status, res.Body)
			}
			res = joinVia(bob, "!v12roomwithoutserver")
			if res.Status != 404 || res.ErrCode() != "M_NOT_FOUND" {
				t.Fatalf("room without known servers: %d %s", res.Status, res.Body)
			}
			res = joinVia(bob, "!unknown:hs1", "not a server")
			if res.Status != 400 || res.ErrCode() != "M_INVALID_PARAM" {
				t.Fatalf("bad via: %d %s", res.Status, res.Body)
			}
		})
	})
}

// toStrings converts a JSON array of strings.
func toStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestFederatedInvite: a user of hs1 invites users of hs2 to a private
// room: the invite shows in their /sync with the room's stripped state;
// one accepts (a join through the inviting server), one rejects (a leave
// through it).
func TestFederatedInvite(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice, bob, carol := n.user("hs1", "alice"), n.user("hs2", "bob"), n.user("hs2", "carol")
		roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Secret", "topic": "plans"})

		alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": bob.UserID})
		if m := membershipOf(alice, roomID, bob.UserID); m != "invite" {
			t.Fatalf("hs1: bob is %q", m)
		}
		inv := eventTypes(dig(syncOnce(t, bob, ""), "rooms", "invite", roomID, "invite_state", "events"))
		for _, want := range []string{"m.room.create/", "m.room.name/", "m.room.topic/", "m.room.join_rules/", "m.room.member/" + bob.UserID} {
			if !contains(inv, want) {
				t.Fatalf("invite_state %v lacks %s", inv, want)
			}
		}
		// Inviting again is a no-op.
		alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": bob.UserID})
		// A user hs2 does not have: hs2 refuses, and so does hs1.
		res := alice.Do("POST", roomPath(roomID)+"/invite", map[string]any{"user_id": "@nobody:hs2"})
		if res.Status != 403 || res.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("invite of an unknown user: %d %s", res.Status, res.Body)
		}
		if m := membershipOf(alice, roomID, "@nobody:hs2"); m != "" {
			t.Fatalf("hs1: the refused invitee is %q", m)
		}

		t.Run("accept", func(t *testing.T) {
			bob.MustDo(200, "POST", roomPath(roomID)+"/join", map[string]any{})
			if m := membershipOf(alice, roomID, bob.UserID); m != "join" {
				t.Fatalf("hs1: bob is %q", m)
			}
			if m := membershipOf(bob, roomID, bob.UserID); m != "join" {
				t.Fatalf("hs2: bob is %q", m)
			}
			rooms := dig(syncOnce(t, bob, ""), "rooms")
			if dig(rooms, "invite", roomID) != nil || dig(rooms, "join", roomID) == nil {
				t.Fatalf("sync rooms after accepting: %v", rooms)
			}
		})

		t.Run("while the server is in the room", func(t *testing.T) {
			// hs2 follows the room now: the invite joins its graph, and
			// the join is local (the sender takes it to hs1).
			dan := n.user("hs2", "dan")
			alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": dan.UserID})
			inv := eventTypes(dig(syncOnce(t, dan, ""), "rooms", "invite", roomID, "invite_state", "events"))
			if !contains(inv, "m.room.name/") || !contains(inv, "m.room.member/"+dan.UserID) {
				t.Fatalf("invite_state %v", inv)
			}
			dan.MustDo(200, "POST", roomPath(roomID)+"/join", map[string]any{})
			eventually(t, "hs1 to see dan join", func() bool { return membershipOf(alice, roomID, dan.UserID) == "join" })
		})

		t.Run("from an ignored user", func(t *testing.T) {
			eve := n.user("hs2", "eve")
			eve.MustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(eve.UserID)+"/account_data/m.ignored_user_list",
				map[string]any{"ignored_users": map[string]any{alice.UserID: map[string]any{}}})
			other := createRoom(t, alice, map[string]any{"preset": "private_chat"})
			alice.MustDo(200, "POST", roomPath(other)+"/invite", map[string]any{"user_id": eve.UserID})
			if dig(syncOnce(t, eve, ""), "rooms", "invite", other) != nil {
				t.Fatal("an invite from an ignored user is listed")
			}
		})

		t.Run("by createRoom", func(t *testing.T) {
			gina := n.user("hs2", "gina")
			roomID := createRoom(t, alice, map[string]any{"preset": "trusted_private_chat", "is_direct": true, "invite": []string{gina.UserID}})
			st := dig(syncOnce(t, gina, ""), "rooms", "invite", roomID, "invite_state", "events")
			found := false
			for _, ev := range st.([]any) {
				if dig(ev, "type") == "m.room.member" && dig(ev, "state_key") == gina.UserID {
					found = dig(ev, "content", "is_direct") == true
				}
			}
			if !found {
				t.Fatalf("invite_state %v", st)
			}
			gina.MustDo(200, "POST", roomPath(roomID)+"/join", map[string]any{})
			if m := membershipOf(alice, roomID, gina.UserID); m != "join" {
				t.Fatalf("hs1: gina is %q", m)
			}
		})

		t.Run("rescinded", func(t *testing.T) {
			// The inviter withdraws the invite (a kick) in a room hs2
			// does not follow: hs2 records it from the transaction.
			frank := n.user("hs2", "frank")
			roomID := createRoom(t, alice, map[string]any{"preset": "private_chat"})
			alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": frank.UserID})
			if dig(syncOnce(t, frank, ""), "rooms", "invite", roomID) == nil {
				t.Fatal("no invite")
			}
			alice.MustDo(200, "POST", roomPath(roomID)+"/kick", map[string]any{"user_id": frank.UserID})
			eventually(t, "the invite to be withdrawn on hs2", func() bool {
				return dig(syncOnce(t, frank, ""), "rooms", "invite", roomID) == nil
			})
			left := syncOnce(t, frank, `{"room":{"include_leave":true}}`)
			if !contains(eventTypes(dig(left, "rooms", "leave", roomID, "timeline", "events")), "m.room.member/"+frank.UserID) {
				t.Fatalf("leave section %v", dig(left, "rooms", "leave"))
			}
		})

		t.Run("reject", func(t *testing.T) {
			// A room hs2 does not follow: the rejection goes through hs1
			// (make_leave, send_leave).
			roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Other", "room_version": "10"})
			alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": carol.UserID, "reason": "join us"})
			first := syncOnce(t, carol, "")
			if dig(first, "rooms", "invite", roomID) == nil {
				t.Fatalf("no invite in sync: %v", dig(first, "rooms"))
			}
			since, _ := first["next_batch"].(string)
			carol.MustDo(200, "POST", roomPath(roomID)+"/leave", map[string]any{"reason": "no thanks"})
			if m := membershipOf(alice, roomID, carol.UserID); m != "leave" {
				t.Fatalf("hs1: carol is %q", m)
			}
			inc := carol.MustDo(200, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).JSON
			left := dig(inc, "rooms", "leave", roomID, "timeline", "events")
			if !contains(eventTypes(left), "m.room.member/"+carol.UserID) {
				t.Fatalf("leave section %v", dig(inc, "rooms"))
			}
			if dig(syncOnce(t, carol, ""), "rooms", "invite", roomID) != nil {
				t.Fatal("the rejected invite is still listed")
			}
			// Leaving again is a no-op.
			carol.MustDo(200, "POST", roomPath(roomID)+"/leave", map[string]any{})
		})
	})
}

// TestFederatedKnock: a user of hs2 knocks on a room of hs1, is invited
// and joins; another knocks and retracts the knock.
func TestFederatedKnock(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice, bob, carol := n.user("hs1", "alice"), n.user("hs2", "bob"), n.user("hs2", "carol")
		roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Knock knock",
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}}})
		knockPath := "/_matrix/client/v3/knock/" + url.PathEscape(roomID) + "?via=hs1"

		res := bob.MustDo(200, "POST", knockPath, map[string]any{"reason": "let me in"})
		if res.JSON["room_id"] != roomID {
			t.Fatalf("knock: %s", res.Body)
		}
		if m := membershipOf(alice, roomID, bob.UserID); m != "knock" {
			t.Fatalf("hs1: bob is %q", m)
		}
		ks := eventTypes(dig(syncOnce(t, bob, ""), "rooms", "knock", roomID, "knock_state", "events"))
		for _, want := range []string{"m.room.create/", "m.room.join_rules/", "m.room.name/", "m.room.member/" + bob.UserID} {
			if !contains(ks, want) {
				t.Fatalf("knock_state %v lacks %s", ks, want)
			}
		}

		alice.MustDo(200, "POST", roomPath(roomID)+"/invite", map[string]any{"user_id": bob.UserID})
		rooms := dig(syncOnce(t, bob, ""), "rooms")
		if dig(rooms, "invite", roomID) == nil || dig(rooms, "knock", roomID) != nil {
			t.Fatalf("after the invite: %v", rooms)
		}
		bob.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		if m := membershipOf(alice, roomID, bob.UserID); m != "join" {
			t.Fatalf("hs1: bob is %q", m)
		}

		// A knock through hs1 can be retracted through it.
		other := createRoom(t, alice, map[string]any{"preset": "private_chat",
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}}})
		carol.MustDo(200, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(other)+"?via=hs1", map[string]any{})
		if m := membershipOf(alice, other, carol.UserID); m != "knock" {
			t.Fatalf("hs1: carol is %q", m)
		}
		carol.MustDo(200, "POST", roomPath(other)+"/leave", map[string]any{})
		if m := membershipOf(alice, other, carol.UserID); m != "leave" {
			t.Fatalf("hs1: carol is %q after retracting", m)
		}
		if dig(syncOnce(t, carol, ""), "rooms", "knock", other) != nil {
			t.Fatal("the retracted knock is still listed")
		}

		// Knocking on a room whose join rules do not allow it.
		closed := createRoom(t, alice, map[string]any{"preset": "private_chat"})
		res = carol.Do("POST", "/_matrix/client/v3/knock/"+url.PathEscape(closed)+"?via=hs1", map[string]any{})
		if res.Status != 403 || res.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("knock on an invite-only room: %d %s", res.Status, res.Body)
		}
	})
}

// TestFederatedBan: banned users of another server cannot join.
func TestFederatedBan(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice, bob, carol := n.user("hs1", "alice"), n.user("hs2", "bob"), n.user("hs2", "carol")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		joinVia(bob, roomID, "hs1")
		alice.MustDo(200, "POST", roomPath(roomID)+"/ban", map[string]any{"user_id": bob.UserID, "reason": "spam"})
		if m := membershipOf(alice, roomID, bob.UserID); m != "ban" {
			t.Fatalf("hs1: bob is %q", m)
		}
		// hs2 asking to join bob again is refused.
		uri := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(bob.UserID) + "?ver=12"
		wantRemoteError(t, n.fedCall("hs2", "hs1", "GET", uri, nil, nil), 403, "M_FORBIDDEN")

		// hs2 learns of the ban (the sender takes it to the banned user's
		// server) and so leaves the room: its users then join through hs1.
		eventually(t, "hs2 to see bob banned", func() bool {
			joined, err := n.hs["hs2"].Rooms.ServerJoined(context.Background(), roomID)
			return err == nil && !joined
		})
		// A user banned before joining.
		alice.MustDo(200, "POST", roomPath(roomID)+"/ban", map[string]any{"user_id": carol.UserID})
		res := joinVia(carol, roomID, "hs1")
		if res.Status != 403 || res.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("banned join: %d %s", res.Status, res.Body)
		}
		if m := membershipOf(alice, roomID, carol.UserID); m != "ban" {
			t.Fatalf("hs1: carol is %q", m)
		}
	})
}

// TestRestrictedJoin: rooms restricted to the members of another room,
// across three servers: the resident server authorises a join with one of
// its users who may invite (join_authorised_via_users_server) and signs
// it; a server without such a user answers M_UNABLE_TO_GRANT_JOIN, one
// that does not know the allowed rooms M_UNABLE_TO_AUTHORISE_JOIN.
func TestRestrictedJoin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2", "hs3")
		alice, bob := n.user("hs1", "alice"), n.user("hs2", "bob")
		dave, eve := n.user("hs3", "dave"), n.user("hs3", "eve")
		space := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_version": "10", "name": "Space"})
		restricted := func(allow []any, users map[string]any) string {
			return createRoom(t, alice, map[string]any{"preset": "private_chat", "room_version": "10",
				"power_level_content_override": map[string]any{"invite": 50, "users": users},
				"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "",
					"content": map[string]any{"join_rule": "restricted", "allow": allow}}}})
		}
		allowSpace := []any{map[string]any{"type": "m.room_membership", "room_id": space}}
		// In B, bob (hs2) may invite; in C, nobody of hs2 may.
		roomB := restricted(allowSpace, map[string]any{alice.UserID: 100, bob.UserID: 50})
		roomC := restricted(allowSpace, map[string]any{alice.UserID: 100})

		res := joinVia(bob, roomB, "hs1")
		if res.Status != 403 || res.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("join without being in the space: %d %s", res.Status, res.Body)
		}
		joinVia(bob, space, "hs1")
		for _, r := range []string{roomB, roomC} {
			if res := joinVia(bob, r, "hs1"); res.Status != 200 {
				t.Fatalf("join of a member of the space: %d %s", res.Status, res.Body)
			}
			c := stateContent(alice, r, "m.room.member", bob.UserID)
			if c["membership"] != "join" || c["join_authorised_via_users_server"] != alice.UserID {
				t.Fatalf("hs1: bob's member event %v", c)
			}
		}

		// dave (hs3) joins the space through hs2, which then knows it.
		if res := joinVia(dave, space, "hs2"); res.Status != 200 {
			t.Fatalf("dave joins the space through hs2: %d %s", res.Status, res.Body)
		}
		makeJoin := func(room, user string) string {
			return "/_matrix/federation/v1/make_join/" + url.PathEscape(room) + "/" + url.PathEscape(user) + "?ver=10"
		}
		wantRemoteError(t, n.fedCall("hs3", "hs2", "GET", makeJoin(roomC, dave.UserID), nil, nil), 400, "M_UNABLE_TO_GRANT_JOIN")
		wantRemoteError(t, n.fedCall("hs3", "hs2", "GET", makeJoin(roomB, eve.UserID), nil, nil), 403, "M_FORBIDDEN")
		// Through hs2, authorised by bob and signed by hs2.
		if res := joinVia(dave, roomB, "hs2"); res.Status != 200 {
			t.Fatalf("dave joins B through hs2: %d %s", res.Status, res.Body)
		}
		for _, c := range []*struct {
			name   string
			client *testutil.Client
		}{{"hs2", bob}, {"hs3", dave}} {
			m := stateContent(c.client, roomB, "m.room.member", dave.UserID)
			if m["membership"] != "join" || m["join_authorised_via_users_server"] != bob.UserID {
				t.Fatalf("%s: dave's member event %v", c.name, m)
			}
		}
		// hs2 passed the join on to hs1.
		eventually(t, "hs1 to see dave's join", func() bool { return membershipOf(alice, roomB, dave.UserID) == "join" })

		// Through hs2 alone, the join of C fails (no one there may invite),
		// although the room ID names hs1; through hs2 then hs1, it works.
		res = joinVia(dave, roomC, "hs2")
		if res.Status != 400 || res.ErrCode() != "M_UNABLE_TO_GRANT_JOIN" {
			t.Fatalf("join of C through hs2: %d %s", res.Status, res.Body)
		}
		eventually(t, "hs1 to see dave in the space", func() bool { return membershipOf(alice, space, dave.UserID) == "join" })
		if res := joinVia(dave, roomC, "hs2", "hs1"); res.Status != 200 {
			t.Fatalf("join of C through hs2 and hs1: %d %s", res.Status, res.Body)
		}
		if c := stateContent(dave, roomC, "m.room.member", dave.UserID); c["join_authorised_via_users_server"] != alice.UserID {
			t.Fatalf("hs3: dave's member event in C %v", c)
		}

		// A local join of a restricted room is authorised by a local user.
		frank := n.user("hs1", "frank")
		frank.MustDo(200, "POST", roomPath(space)+"/join", map[string]any{})
		frank.MustDo(200, "POST", roomPath(roomB)+"/join", map[string]any{})
		if c := stateContent(alice, roomB, "m.room.member", frank.UserID); c["membership"] != "join" || c["join_authorised_via_users_server"] != alice.UserID {
			t.Fatalf("frank's member event %v", c)
		}

		// A room of hs2 that hs1 is in, where no user of hs1 may invite:
		// a user of hs1 joins it through hs2.
		charlie, greg := n.user("hs2", "charlie"), n.user("hs1", "greg")
		space2 := createRoom(t, charlie, map[string]any{"preset": "public_chat", "room_version": "10"})
		roomF := createRoom(t, charlie, map[string]any{"preset": "private_chat", "room_version": "10",
			"power_level_content_override": map[string]any{"invite": 50},
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "",
				"content": map[string]any{"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space2}}}}}})
		charlie.MustDo(200, "POST", roomPath(roomF)+"/invite", map[string]any{"user_id": alice.UserID})
		alice.MustDo(200, "POST", roomPath(roomF)+"/join", map[string]any{})
		if res := joinVia(greg, roomF, "hs1"); res.Status != 403 {
			t.Fatalf("greg's join before being in the space: %d %s", res.Status, res.Body)
		}
		joinVia(greg, space2, "hs2")
		if res := joinVia(greg, roomF, "hs1"); res.Status != 200 {
			t.Fatalf("greg's join: %d %s", res.Status, res.Body)
		}
		if c := stateContent(charlie, roomF, "m.room.member", greg.UserID); c["join_authorised_via_users_server"] != charlie.UserID {
			t.Fatalf("hs2: greg's member event %v", c)
		}

		// knock_restricted with no condition: a join is refused.
		roomE := createRoom(t, alice, map[string]any{"preset": "private_chat", "room_version": "10",
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock_restricted"}}}})
		if res := joinVia(bob, roomE, "hs1"); res.Status != 403 || res.ErrCode() != "M_FORBIDDEN" {
			t.Fatalf("join of a knock_restricted room without conditions: %d %s", res.Status, res.Body)
		}

		// A restricted room whose allowed room hs2 does not follow; bob is
		// in it through an invite.
		roomD := restricted([]any{map[string]any{"type": "m.room_membership", "room_id": "!elsewhere:hs1"}}, map[string]any{alice.UserID: 100, bob.UserID: 50})
		alice.MustDo(200, "POST", roomPath(roomD)+"/invite", map[string]any{"user_id": bob.UserID})
		bob.MustDo(200, "POST", roomPath(roomD)+"/join", map[string]any{})
		wantRemoteError(t, n.fedCall("hs3", "hs2", "GET", makeJoin(roomD, dave.UserID), nil, nil), 400, "M_UNABLE_TO_AUTHORISE_JOIN")
	})
}

// TestForgedSendJoin: send_join refuses events that do not check out, and
// they change nothing.
func TestForgedSendJoin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice := n.user("hs1", "alice")
		hs2 := n.hs["hs2"]
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		other := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		const mallory = "@mallory:hs2"
		keyID, key := hs2.SigningKey.ID, hs2.SigningKey.Private
		sendJoin := func(room string, pdu gomatrixserverlib.PDU) *fedAnswer {
			uri := "/_matrix/federation/v2/send_join/" + url.PathEscape(room) + "/" + url.PathEscape(pdu.EventID())
			var out map[string]any
			return &fedAnswer{n.fedCall("hs2", "hs1", "PUT", uri, json.RawMessage(pdu.JSON()), &out), out}
		}
		template := func() (gomatrixserverlib.RoomVersion, *gomatrixserverlib.ProtoEvent) {
			return n.makeJoinTemplate("hs2", "hs1", roomID, mallory)
		}

		ver, pe := template()
		forged := n.buildEvent(ver, pe, "hs2", keyID, randomKey(t))
		sendJoin(roomID, forged).want(t, 400, "M_INVALID_PARAM")

		ver, pe = template()
		sendJoin(other, n.buildEvent(ver, pe, "hs2", keyID, key)).want(t, 400, "M_INVALID_PARAM")

		ver, pe = template()
		pe.Type = "m.room.message"
		sendJoin(roomID, n.buildEvent(ver, pe, "hs2", keyID, key)).want(t, 400, "M_INVALID_PARAM")

		ver, pe = template()
		pe.Content = []byte(`{"membership":"leave"}`)
		sendJoin(roomID, n.buildEvent(ver, pe, "hs2", keyID, key)).want(t, 400, "M_INVALID_PARAM")

		ver, pe = template()
		someone := "@someone:hs1"
		pe.SenderID, pe.StateKey = someone, &someone
		sendJoin(roomID, n.buildEvent(ver, pe, "hs2", keyID, key)).want(t, 400, "M_INVALID_PARAM")

		ver, pe = template()
		bad := n.buildEvent(ver, pe, "hs2", keyID, key)
		uri := "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/$notthisevent"
		wantRemoteError(t, n.fedCall("hs2", "hs1", "PUT", uri, json.RawMessage(bad.JSON()), nil), 400, "M_INVALID_PARAM")

		for _, r := range []string{roomID, other} {
			if m := membershipOf(alice, r, mallory); m != "" {
				t.Fatalf("a refused join changed the room: mallory is %q", m)
			}
		}

		// The genuine event is accepted, and the answer holds the state.
		ver, pe = template()
		ans := sendJoin(roomID, n.buildEvent(ver, pe, "hs2", keyID, key))
		if ans.re != nil {
			t.Fatalf("genuine join: %v", ans.re)
		}
		state, chain := ans.body["state"].([]any), ans.body["auth_chain"].([]any)
		if len(state) == 0 || len(chain) == 0 || ans.body["event"] == nil || ans.body["members_omitted"] != false {
			t.Fatalf("send_join answer: %v", ans.body)
		}
		if m := membershipOf(alice, roomID, mallory); m != "join" {
			t.Fatalf("hs1: mallory is %q", m)
		}
	})
}

// fedAnswer is the outcome of a federation request made by a test.
type fedAnswer struct {
	re   *federation.RemoteError // nil on success
	body map[string]any
}

func (a *fedAnswer) want(t *testing.T, status int, errcode string) {
	t.Helper()
	wantRemoteError(t, a.re, status, errcode)
}

// TestMembershipEndpointErrors: the make_* and invite endpoints answer
// the spec's errors.
func TestMembershipEndpointErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		alice, bob := n.user("hs1", "alice"), n.user("hs2", "bob")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		uri := func(endpoint, room, user, query string) string {
			return "/_matrix/federation/v1/" + endpoint + "/" + url.PathEscape(room) + "/" + url.PathEscape(user) + query
		}
		for _, ep := range []string{"make_join", "make_leave", "make_knock"} {
			wantRemoteError(t, n.fedCall("hs2", "hs1", "GET", uri(ep, "!unknown:hs1", bob.UserID, "?ver=12"), nil, nil), 404, "M_NOT_FOUND")
		}
		wantRemoteError(t, n.fedCall("hs2", "hs1", "GET", uri("make_join", roomID, alice.UserID, "?ver=12"), nil, nil), 403, "M_FORBIDDEN")
		wantRemoteError(t, n.fedCall("hs2", "hs1", "GET", uri("make_join", roomID, "not-a-user", "?ver=12"), nil, nil), 400, "M_INVALID_PARAM")
		for _, q := range []string{"?ver=1&ver=2", ""} {
			resp, err := n.hs["hs2"].Federation.Client.DoRaw(context.Background(), "hs1", "GET", uri("make_join", roomID, bob.UserID, q), nil, true)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body map[string]any
			_ = json.Unmarshal(raw, &body)
			if resp.StatusCode != 400 || body["errcode"] != "M_INCOMPATIBLE_ROOM_VERSION" || body["room_version"] != "12" {
				t.Fatalf("make_join%s: %d %s", q, resp.StatusCode, raw)
			}
		}
		// A server the room's ACL denies.
		denied := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		alice.MustDo(200, "PUT", roomPath(denied)+"/state/m.room.server_acl/", map[string]any{"allow": []string{"*"}, "deny": []string{"hs2"}})
		for _, ep := range []string{"make_join", "make_knock"} {
			wantRemoteError(t, n.fedCall("hs2", "hs1", "GET", uri(ep, denied, bob.UserID, "?ver=12"), nil, nil), 403, "M_FORBIDDEN")
		}
		if res := joinVia(bob, denied, "hs1"); res.Status != 403 {
			t.Fatalf("join of a denied server's user: %d %s", res.Status, res.Body)
		}
		// The unauthenticated get 401.
		if res := n.hs["hs1"].Client(t).Do("GET", uri("make_join", roomID, bob.UserID, "?ver=12"), nil); res.Status != 401 {
			t.Fatalf("unsigned make_join: %d", res.Status)
		}

		// Invites: unsupported room version, an invitee of another server.
		ver, pe := n.makeJoinTemplate("hs2", "hs1", roomID, bob.UserID)
		invitee := "@bob:hs1"
		pe.StateKey, pe.SenderID = &invitee, "@alice:hs2"
		pe.Content = []byte(`{"membership":"invite"}`)
		inv := n.buildEvent(ver, pe, "hs2", n.hs["hs2"].SigningKey.ID, n.hs["hs2"].SigningKey.Private)
		invURI := "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(inv.EventID())
		body := map[string]any{"room_version": "99", "event": json.RawMessage(inv.JSON()), "invite_room_state": []any{}}
		wantRemoteError(t, n.fedCall("hs2", "hs1", "PUT", invURI, body, nil), 400, "M_INCOMPATIBLE_ROOM_VERSION")
		body["room_version"] = string(ver)
		wantRemoteError(t, n.fedCall("hs2", "hs1", "PUT", invURI, map[string]any{"event": json.RawMessage(inv.JSON())}, nil), 400, "M_MISSING_PARAM")
		// The invitee must be an active user of the receiving server.
		invitee = "@nobody:hs1"
		inv = n.buildEvent(ver, pe, "hs2", n.hs["hs2"].SigningKey.ID, n.hs["hs2"].SigningKey.Private)
		invURI = "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(inv.EventID())
		body["event"] = json.RawMessage(inv.JSON())
		wantRemoteError(t, n.fedCall("hs2", "hs1", "PUT", invURI, body, nil), 403, "M_FORBIDDEN")
		invitee = "@carol:hs3"
		inv = n.buildEvent(ver, pe, "hs2", n.hs["hs2"].SigningKey.ID, n.hs["hs2"].SigningKey.Private)
		invURI = "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(inv.EventID())
		body["event"] = json.RawMessage(inv.JSON())
		wantRemoteError(t, n.fedCall("hs2", "hs1", "PUT", invURI, body, nil), 400, "M_INVALID_PARAM")
	})
}

// TestFederatedChat: three servers in one room after remote joins: the
// joins reach every server (the resident server passes them on), messages
// flow every way, and a leave and a ban reach the others.
func TestFederatedChat(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2", "hs3")
		alice, bob, dave := n.user("hs1", "alice"), n.user("hs2", "bob"), n.user("hs3", "dave")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Chat"})
		for _, c := range []*testutil.Client{bob, dave} {
			if res := joinVia(c, roomID, "hs1"); res.Status != 200 {
				t.Fatalf("%s joins: %d %s", c.UserID, res.Status, res.Body)
			}
		}
		// hs2 learns of dave's join from hs1, which accepted it.
		eventually(t, "hs2 to see dave's join", func() bool { return membershipOf(bob, roomID, dave.UserID) == "join" })

		say := func(c *testutil.Client, body string) {
			c.MustDo(200, "PUT", roomPath(roomID)+"/send/m.room.message/"+url.PathEscape(body), map[string]any{"msgtype": "m.text", "body": body})
		}
		say(bob, "hello from hs2")
		say(alice, "hello from hs1")
		say(dave, "hello from hs3")
		for _, c := range []*testutil.Client{alice, bob, dave} {
			for _, msg := range []string{"hello from hs1", "hello from hs2", "hello from hs3"} {
				eventually(t, c.UserID+" to see "+msg, func() bool { return contains(messageBodies(c, roomID), msg) })
			}
		}

		bob.MustDo(200, "POST", roomPath(roomID)+"/leave", map[string]any{})
		for _, c := range []*testutil.Client{alice, dave} {
			eventually(t, c.UserID+" to see bob leave", func() bool { return membershipOf(c, roomID, bob.UserID) == "leave" })
		}
		// hs2 has left the room; bob comes back through hs1 (the room is
		// known to hs2, its state is not current).
		say(alice, "while bob was away")
		if res := joinVia(bob, roomID, "hs1"); res.Status != 200 {
			t.Fatalf("rejoin: %d %s", res.Status, res.Body)
		}
		if m := membershipOf(alice, roomID, bob.UserID); m != "join" {
			t.Fatalf("hs1: bob is %q after rejoining", m)
		}
		say(bob, "back again")
		eventually(t, "alice to see bob again", func() bool { return contains(messageBodies(alice, roomID), "back again") })
		alice.MustDo(200, "POST", roomPath(roomID)+"/ban", map[string]any{"user_id": dave.UserID})
		eventually(t, "hs3 to see dave banned", func() bool {
			res := dave.Do("GET", roomPath(roomID)+"/messages?dir=b&limit=50", nil)
			for _, ev := range res.JSON["chunk"].([]any) {
				if dig(ev, "type") == "m.room.member" && dig(ev, "state_key") == dave.UserID && dig(ev, "content", "membership") == "ban" {
					return true
				}
			}
			return false
		})
	})
}

// messageBodies lists the bodies of the latest messages of a room as c's
// server serves them.
func messageBodies(c *testutil.Client, roomID string) []string {
	res := c.Do("GET", roomPath(roomID)+"/messages?dir=b&limit=50", nil)
	chunk, _ := res.JSON["chunk"].([]any)
	var out []string
	for _, ev := range chunk {
		if body, ok := dig(ev, "content", "body").(string); ok {
			out = append(out, body)
		}
	}
	return out
}

// TestInviteRoomState: the invite_room_state of an invite is checked
// (PDUs must be of the room and verify; from room version 12 on, one that
// does not fails the invite), signed by the invitee's server and shown to
// the invitee.
func TestInviteRoomState(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n := newMemberNet(t, b, "hs1", "hs2")
		zed, bob := n.user("hs2", "zed"), n.user("hs1", "bob")
		hs2 := n.hs["hs2"]
		ctx := context.Background()
		invite := func(roomID string) gomatrixserverlib.PDU {
			target := bob.UserID
			pe, err := hs2.Rooms.EventTemplate(ctx, roomID, rooms.EventSpec{Sender: zed.UserID, Type: "m.room.member", StateKey: &target, Content: map[string]any{"membership": "invite"}})
			if err != nil {
				t.Fatal(err)
			}
			ver, _ := hs2.Rooms.RoomVersion(ctx, roomID)
			return n.buildEvent(ver, pe, "hs2", hs2.SigningKey.ID, hs2.SigningKey.Private)
		}
		put := func(pdu gomatrixserverlib.PDU, state []json.RawMessage, out any) *federation.RemoteError {
			uri := "/_matrix/federation/v2/invite/" + url.PathEscape(pdu.RoomID().String()) + "/" + url.PathEscape(pdu.EventID())
			return n.fedCall("hs2", "hs1", "PUT", uri, map[string]any{"room_version": string(pdu.Version()), "event": json.RawMessage(pdu.JSON()), "invite_room_state": state}, out)
		}
		described := func(roomID string) []json.RawMessage {
			evs, err := hs2.Rooms.StrippedStateEvents(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			var out []json.RawMessage
			for _, ev := range evs {
				out = append(out, ev.JSON())
			}
			return out
		}

		r12 := createRoom(t, zed, map[string]any{"preset": "private_chat", "name": "Twelve"})
		other := createRoom(t, zed, map[string]any{"preset": "private_chat", "name": "Elsewhere"})
		inv := invite(r12)
		// An event of another room; a forged event; not an event.
		wantRemoteError(t, put(inv, append(described(r12), described(other)[1]), nil), 400, "M_INVALID_PARAM")
		forged := strings.Replace(string(described(r12)[1]), `"sender":"@zed:hs2"`, `"sender":"@mallory:hs2"`, 1)
		wantRemoteError(t, put(inv, append(described(r12), json.RawMessage(forged)), nil), 400, "M_INVALID_PARAM")
		wantRemoteError(t, put(inv, []json.RawMessage{json.RawMessage(`{"content":{}}`)}, nil), 400, "M_INVALID_PARAM")
		if dig(syncOnce(t, bob, ""), "rooms", "invite", r12) != nil {
			t.Fatal("a refused invite is listed")
		}

		var resp struct {
			Event json.RawMessage `json:"event"`
		}
		if re := put(inv, described(r12), &resp); re != nil {
			t.Fatal(re)
		}
		signed, err := gomatrixserverlib.MustGetRoomVersion(inv.Version()).NewEventFromUntrustedJSON(resp.Event)
		if err != nil || signed.EventID() != inv.EventID() {
			t.Fatalf("returned invite %s: %v", resp.Event, err)
		}
		redacted, _ := gomatrixserverlib.MustGetRoomVersion(inv.Version()).RedactEventJSON(signed.JSON())
		hs1 := n.hs["hs1"]
		if err := gomatrixserverlib.VerifyJSON("hs1", gomatrixserverlib.KeyID(hs1.SigningKey.ID), hs1.SigningKey.Public(), redacted); err != nil {
			t.Fatalf("the invite is not signed by hs1: %v", err)
		}
		st := dig(syncOnce(t, bob, ""), "rooms", "invite", r12, "invite_state", "events")
		if !contains(eventTypes(st), "m.room.name/") || !contains(eventTypes(st), "m.room.member/"+bob.UserID) {
			t.Fatalf("invite_state %v", st)
		}

		// Servers that have not migrated send stripped events, without
		// the create event: they pass. In room version 10, entries that
		// fail the checks are left out.
		stripped := json.RawMessage(`{"type":"m.room.name","state_key":"","sender":"@zed:hs2","content":{"name":"Stripped"}}`)
		r12b := createRoom(t, zed, map[string]any{"preset": "private_chat"})
		if re := put(invite(r12b), []json.RawMessage{stripped}, nil); re != nil {
			t.Fatal(re)
		}
		r10 := createRoom(t, zed, map[string]any{"preset": "private_chat", "room_version": "10"})
		if re := put(invite(r10), []json.RawMessage{stripped, described(other)[0]}, nil); re != nil {
			t.Fatal(re)
		}
		for _, r := range []string{r12b, r10} {
			st = dig(syncOnce(t, bob, ""), "rooms", "invite", r, "invite_state", "events")
			if types := eventTypes(st); !contains(types, "m.room.name/") || contains(types, "m.room.create/") {
				t.Fatalf("invite_state %v", st)
			}
		}
	})
}

// TestJoinDropsUncheckableEvents: events of a send_join answer whose auth
// events are missing (dropped because they did not verify) are left out,
// and so are the events that depend on them, instead of failing the join.
func TestJoinDropsUncheckableEvents(t *testing.T) {
	n := newMemberNet(t, testutil.SQLite, "hs1", "hs2")
	alice := n.user("hs1", "alice")
	hs1, hs2 := n.hs["hs1"], n.hs["hs2"]
	ctx := context.Background()
	roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Drops"})
	cur, err := hs1.Rooms.CurrentState(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := hs1.Rooms.RoomStateEvents(ctx, roomID, cur)
	if err != nil {
		t.Fatal(err)
	}
	var state []gomatrixserverlib.PDU
	var powerLevels string
	for _, ev := range evs {
		if ev.Type() == "m.room.power_levels" {
			powerLevels = ev.EventID()
			continue // as if it had failed the signature checks
		}
		state = append(state, ev.PDU)
	}
	keptState, keptChain, err := federation.WithAuthEvents(hs2.RoomFederation, ctx, state, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keptChain) != 0 {
		t.Fatalf("auth chain %v", keptChain)
	}
	var kept []string
	for _, p := range keptState {
		for _, a := range p.AuthEventIDs() {
			if a == powerLevels {
				t.Fatalf("%s (%s) depends on the dropped event and was kept", p.EventID(), p.Type())
			}
		}
		kept = append(kept, p.Type())
	}
	if !contains(kept, "m.room.create") || contains(kept, "m.room.name") || len(kept) >= len(state) {
		t.Fatalf("kept %v of %d", kept, len(state))
	}
	// With everything there, nothing is dropped.
	all := append(state, evsByType(evs, "m.room.power_levels")...)
	if keptState, _, err = federation.WithAuthEvents(hs2.RoomFederation, ctx, all, nil); err != nil || len(keptState) != len(all) {
		t.Fatalf("kept %d of %d: %v", len(keptState), len(all), err)
	}
}

// evsByType returns the PDUs of the events of a type.
func evsByType(evs []*rooms.Event, typ string) []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	for _, ev := range evs {
		if ev.Type() == typ {
			out = append(out, ev.PDU)
		}
	}
	return out
}
