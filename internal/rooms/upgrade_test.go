package rooms_test

import (
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// upgradeUsers are the users of the upgrade tests: alice creates rooms,
// bob is a moderator (50), carol gets banned and dave is an ordinary
// member.
type upgradeUsers struct {
	alice, bob, carol, dave *testutil.Client
}

// upgradeOldRoom builds a room of version ver with state of every kind an
// upgrade carries over (and one it does not), aliases, a ban, and a
// directory listing. tombstoneLevel is the power needed to upgrade (and
// to change the power levels).
func upgradeOldRoom(t *testing.T, srv *testutil.Server, u upgradeUsers, ver, tag string, tombstoneLevel int) *dirRoom {
	t.Helper()
	users := map[string]any{u.bob.UserID: 50}
	if ver != "12" {
		users[u.alice.UserID] = 100
	}
	rm := dirCreateRoom(t, u.alice, map[string]any{
		"room_version": ver, "preset": "public_chat", "visibility": "public", "name": "Old " + tag, "topic": "Topic " + tag,
		"room_alias_name": "main" + tag,
		"power_level_content_override": map[string]any{"users": users, "events": map[string]any{
			"m.room.tombstone": tombstoneLevel, "m.room.power_levels": tombstoneLevel, "m.room.encryption": 100,
		}},
	})
	for _, c := range []*testutil.Client{u.bob, u.carol, u.dave} {
		c.MustDo(200, "POST", rm.path+"/join", map[string]any{})
	}
	u.alice.MustDo(200, "POST", rm.path+"/ban", map[string]any{"user_id": u.carol.UserID, "reason": "spam"})
	for typ, content := range map[string]map[string]any{
		"m.room.avatar":       {"url": "mxc://example.org/avatar"},
		"m.room.guest_access": {"guest_access": "can_join"},
		"m.room.server_acl":   {"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": true},
		"m.room.encryption":   {"algorithm": "m.megolm.v1.aes-sha2"},
		"org.example.custom":  {"not": "copied"},
	} {
		u.alice.MustDo(200, "PUT", rm.path+"/state/"+typ+"/", content)
	}
	alt := dirAlias(srv, "alt"+tag)
	u.alice.MustDo(200, "PUT", dirAliasPath+url.PathEscape(alt), map[string]any{"room_id": rm.id})
	u.alice.MustDo(200, "PUT", rm.path+"/state/m.room.canonical_alias/", map[string]any{
		"alias": dirAlias(srv, "main"+tag), "alt_aliases": []string{alt, "#remote:elsewhere.example"},
	})
	return rm
}

func TestRoomUpgrade(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		u := upgradeUsers{
			alice: srv.NewUser(t, "alice", "pw"), bob: srv.NewUser(t, "bob", "pw"), carol: srv.NewUser(t, "carol", "pw"),
			dave: srv.NewUser(t, "dave", "pw"),
		}
		for _, tc := range []struct {
			name, from, to string
			byBob          bool     // bob (50) upgrades: tombstone level 50, and he must be raised to copy encryption
			additional     []string // additional_creators asked for
		}{
			{name: "v10-v12", from: "10", to: "12", additional: []string{u.bob.UserID}},
			{name: "v11-v11", from: "11", to: "11"},
			{name: "v11-v11-moderator", from: "11", to: "11", byBob: true},
			{name: "v12-v11", from: "12", to: "11"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tag := tc.name
				upgrader, level := u.alice, 100
				if tc.byBob {
					upgrader, level = u.bob, 50
				}
				old := upgradeOldRoom(t, srv, u, tc.from, tag, level)
				body := map[string]any{"new_version": tc.to}
				if tc.additional != nil {
					body["additional_creators"] = tc.additional
				}
				r := upgrader.MustDo(200, "POST", old.path+"/upgrade", body)
				newID, _ := r.JSON["replacement_room"].(string)
				if newID == "" || newID == old.id {
					t.Fatalf("upgrade: %s", r.Body)
				}
				nr := &dirRoom{id: newID, path: "/_matrix/client/v3/rooms/" + url.PathEscape(newID)}
				checkOldRoomAfterUpgrade(t, srv, u, old, nr)
				checkNewRoomAfterUpgrade(t, srv, u, upgrader, old, nr, tc.to, tc.additional, tag)
			})
		}
	})
}

func checkOldRoomAfterUpgrade(t *testing.T, srv *testutil.Server, u upgradeUsers, old, nr *dirRoom) {
	t.Helper()
	tomb := dirState(t, u.alice, old, "m.room.tombstone", "")
	if tomb["replacement_room"] != nr.id || tomb["body"] == "" {
		t.Fatalf("tombstone: %v", tomb)
	}
	pl := dirState(t, u.alice, old, "m.room.power_levels", "")
	if pl["events_default"] != 50.0 || pl["invite"] != 50.0 {
		t.Fatalf("old room power levels not restricted: %v", pl)
	}
	dirExpect(t, "ordinary member talks in the old room",
		u.dave.Do("PUT", old.path+"/send/m.room.message/after", map[string]any{"msgtype": "m.text", "body": "hello?"}), 403, "M_FORBIDDEN")
	ca := dirState(t, u.alice, old, "m.room.canonical_alias", "")
	if _, ok := ca["alias"]; ok || fmt.Sprint(ca["alt_aliases"]) != "[#remote:elsewhere.example]" {
		t.Fatalf("old canonical alias keeps only remote aliases: %v", ca)
	}
	if r := u.alice.MustDo(200, "GET", old.path+"/aliases", nil); len(r.JSON["aliases"].([]any)) != 0 {
		t.Fatalf("old room still has aliases: %s", r.Body)
	}
	if v := srv.Client(t).MustDo(200, "GET", dirListPath+url.PathEscape(old.id), nil).JSON["visibility"]; v != "private" {
		t.Fatalf("old room still published: %v", v)
	}
}

func checkNewRoomAfterUpgrade(t *testing.T, srv *testutil.Server, u upgradeUsers, upgrader *testutil.Client, old, nr *dirRoom, to string, additional []string, tag string) {
	t.Helper()
	create := dirState(t, upgrader, nr, "m.room.create", "")
	pred, _ := create["predecessor"].(map[string]any)
	// v12 drops predecessor.event_id; earlier versions carry it.
	if create["room_version"] != to || pred["room_id"] != old.id || (pred["event_id"] == nil) != (to == "12") {
		t.Fatalf("create: %v", create)
	}
	if _, ok := create["creator"]; ok != (to != "11" && to != "12") {
		t.Fatalf("creator field in v%s create: %v", to, create)
	}
	if got, ok := create["additional_creators"]; ok != (additional != nil) || (ok && fmt.Sprint(got) != fmt.Sprint(additional)) {
		t.Fatalf("additional_creators: %v, want %v", create, additional)
	}
	// Carried state is equal in both rooms.
	for _, typ := range []string{"m.room.name", "m.room.topic", "m.room.avatar", "m.room.join_rules", "m.room.history_visibility",
		"m.room.guest_access", "m.room.server_acl", "m.room.encryption"} {
		was, now := dirState(t, u.alice, old, typ, ""), dirState(t, upgrader, nr, typ, "")
		if fmt.Sprint(was) != fmt.Sprint(now) {
			t.Fatalf("%s: old %v, new %v", typ, was, now)
		}
	}
	dirExpect(t, "custom state copied", upgrader.Do("GET", nr.path+"/state/org.example.custom/", nil), 404, "M_NOT_FOUND")
	// Power levels: bob keeps 50; creators of v12 rooms are not listed.
	pl := dirState(t, upgrader, nr, "m.room.power_levels", "")
	users := pl["users"].(map[string]any)
	if users[u.bob.UserID] != 50.0 && !slices.Contains(additional, u.bob.UserID) {
		t.Fatalf("bob's level lost: %v", users)
	}
	aliceLevel, listed := users[u.alice.UserID]
	if to == "12" {
		if listed || slices.ContainsFunc(additional, func(c string) bool { _, ok := users[c]; return ok }) {
			t.Fatalf("creators listed in v12 power levels: %v", users)
		}
	} else if aliceLevel != 100.0 {
		t.Fatalf("alice's level in the v%s room: %v", to, users)
	}
	if pl["events"].(map[string]any)["m.room.tombstone"] == nil || pl["events_default"] != 0.0 {
		t.Fatalf("new power levels: %v", pl)
	}
	if m := dirState(t, upgrader, nr, "m.room.member", u.carol.UserID); m["membership"] != "ban" {
		t.Fatalf("ban not carried: %v", m)
	}
	ca := dirState(t, upgrader, nr, "m.room.canonical_alias", "")
	main, alt := dirAlias(srv, "main"+tag), dirAlias(srv, "alt"+tag)
	if ca["alias"] != main || fmt.Sprint(ca["alt_aliases"]) != fmt.Sprint([]any{alt}) {
		t.Fatalf("new canonical alias: %v", ca)
	}
	for _, a := range []string{main, alt} {
		if r := srv.Client(t).MustDo(200, "GET", dirAliasPath+url.PathEscape(a), nil); r.JSON["room_id"] != nr.id {
			t.Fatalf("alias %s: %s", a, r.Body)
		}
	}
	if v := srv.Client(t).MustDo(200, "GET", dirListPath+url.PathEscape(nr.id), nil).JSON["visibility"]; v != "public" {
		t.Fatalf("new room not published: %v", v)
	}
	joined := upgrader.MustDo(200, "GET", nr.path+"/joined_members", nil).JSON["joined"].(map[string]any)
	if _, ok := joined[upgrader.UserID]; !ok || len(joined) != 1 {
		t.Fatalf("joined members of the new room: %v", joined)
	}
	// Members of the old room follow through the tombstone.
	u.dave.MustDo(200, "POST", nr.path+"/join", map[string]any{})
	dirExpect(t, "banned user joins the new room", u.carol.Do("POST", nr.path+"/join", map[string]any{}), 403, "M_FORBIDDEN")
}

func TestRoomUpgradeErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		dave := srv.NewUser(t, "dave", "pw")
		eve := srv.NewUser(t, "eve", "pw")
		rm := dirCreateRoom(t, alice, map[string]any{"room_version": "11", "preset": "public_chat"})
		dave.MustDo(200, "POST", rm.path+"/join", map[string]any{})
		up := rm.path + "/upgrade"
		dirExpect(t, "no token", srv.Client(t).Do("POST", up, map[string]any{"new_version": "12"}), 401, "M_MISSING_TOKEN")
		dirExpect(t, "not JSON", alice.Do("POST", up, "x"), 400, "M_NOT_JSON")
		dirExpect(t, "no new_version", alice.Do("POST", up, map[string]any{}), 400, "M_MISSING_PARAM")
		dirExpect(t, "new_version not a string", alice.Do("POST", up, map[string]any{"new_version": 12}), 400, "M_BAD_JSON")
		dirExpect(t, "unknown version", alice.Do("POST", up, map[string]any{"new_version": "99"}), 400, "M_UNSUPPORTED_ROOM_VERSION")
		dirExpect(t, "bad additional creator", alice.Do("POST", up, map[string]any{"new_version": "12", "additional_creators": []string{"bob"}}), 400, "M_INVALID_PARAM")
		dirExpect(t, "bad room ID", alice.Do("POST", "/_matrix/client/v3/rooms/x/upgrade", map[string]any{"new_version": "12"}), 400, "M_INVALID_PARAM")
		dirExpect(t, "unknown room", alice.Do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape("!nope:"+srv.Config.ServerName)+"/upgrade",
			map[string]any{"new_version": "12"}), 404, "M_NOT_FOUND")
		dirExpect(t, "member without power", dave.Do("POST", up, map[string]any{"new_version": "12"}), 403, "M_FORBIDDEN")
		dirExpect(t, "non-member", eve.Do("POST", up, map[string]any{"new_version": "12"}), 403, "M_FORBIDDEN")
		// Nothing happened to the room.
		dirExpect(t, "tombstone after refusals", alice.Do("GET", rm.path+"/state/m.room.tombstone/", nil), 404, "M_NOT_FOUND")
	})
}
