package rooms_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// TestRoomLifecycleEveryVersion creates a room in every stable room version
// and runs the basic life of a room through it: state, messages, invites,
// joins, redaction, kicks and bans.
func TestRoomLifecycleEveryVersion(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		for v := 1; v <= 12; v++ {
			t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
				r := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{
					"room_version": fmt.Sprint(v), "name": "Room", "topic": "t", "preset": "private_chat",
				})
				roomID, _ := r.JSON["room_id"].(string)
				if roomID == "" {
					t.Fatalf("no room_id: %s", r.Body)
				}
				rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
				r = alice.MustDo(200, "GET", rp+"/state/m.room.name/", nil)
				if r.JSON["name"] != "Room" {
					t.Fatalf("name: %s", r.Body)
				}
				r = alice.MustDo(200, "GET", rp+"/state/m.room.create", nil)
				if r.JSON["room_version"] != fmt.Sprint(v) {
					t.Fatalf("create: %s", r.Body)
				}
				// Bob may not send before joining.
				if r := bob.Do("PUT", rp+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "hi"}); r.Status != 403 || r.ErrCode() != "M_FORBIDDEN" {
					t.Fatalf("send before join: %d %s", r.Status, r.Body)
				}
				// Nor join an invite-only room uninvited.
				if r := bob.Do("POST", rp+"/join", map[string]any{}); r.Status != 403 {
					t.Fatalf("uninvited join: %d %s", r.Status, r.Body)
				}
				alice.MustDo(200, "POST", rp+"/invite", map[string]any{"user_id": bob.UserID})
				bob.MustDo(200, "POST", rp+"/join", map[string]any{})
				r = bob.MustDo(200, "PUT", rp+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "hi"})
				eventID := r.JSON["event_id"]
				// Same transaction ID: same event.
				r = bob.MustDo(200, "PUT", rp+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "hi"})
				if r.JSON["event_id"] != eventID {
					t.Fatalf("txn idempotency: %v vs %v", r.JSON["event_id"], eventID)
				}
				r = alice.MustDo(200, "GET", rp+"/event/"+url.PathEscape(eventID.(string)), nil)
				if r.JSON["content"].(map[string]any)["body"] != "hi" {
					t.Fatalf("event: %s", r.Body)
				}
				r = alice.MustDo(200, "GET", rp+"/joined_members", nil)
				if len(r.JSON["joined"].(map[string]any)) != 2 {
					t.Fatalf("joined members: %s", r.Body)
				}
				// Bob (power 0) may not redact Alice's events, Alice (100) may redact Bob's.
				r = alice.MustDo(200, "PUT", rp+"/send/m.room.message/t2", map[string]any{"msgtype": "m.text", "body": "secret"})
				aliceEvent := r.JSON["event_id"].(string)
				if r := bob.Do("PUT", rp+"/redact/"+url.PathEscape(aliceEvent)+"/r1", map[string]any{}); r.Status != 403 {
					t.Fatalf("bob redacting alice: %d %s", r.Status, r.Body)
				}
				alice.MustDo(200, "PUT", rp+"/redact/"+url.PathEscape(eventID.(string))+"/r1", map[string]any{"reason": "spam"})
				r = bob.MustDo(200, "GET", rp+"/event/"+url.PathEscape(eventID.(string)), nil)
				if c := r.JSON["content"].(map[string]any); len(c) != 0 {
					t.Fatalf("redacted event still has content: %s", r.Body)
				}
				if _, ok := r.JSON["unsigned"].(map[string]any)["redacted_because"]; !ok {
					t.Fatalf("no redacted_because: %s", r.Body)
				}
				alice.MustDo(200, "POST", rp+"/kick", map[string]any{"user_id": bob.UserID, "reason": "bye"})
				if r := bob.Do("PUT", rp+"/send/m.room.message/t3", map[string]any{"body": "x"}); r.Status != 403 {
					t.Fatalf("send after kick: %d", r.Status)
				}
				alice.MustDo(200, "POST", rp+"/ban", map[string]any{"user_id": bob.UserID})
				if r := alice.Do("POST", rp+"/invite", map[string]any{"user_id": bob.UserID}); r.Status != 403 {
					t.Fatalf("invite banned: %d", r.Status)
				}
				alice.MustDo(200, "POST", rp+"/unban", map[string]any{"user_id": bob.UserID})
				r = alice.MustDo(200, "GET", rp+"/members?membership=leave", nil)
				if len(r.JSON["chunk"].([]any)) != 1 {
					t.Fatalf("members leave: %s", r.Body)
				}
				r = alice.MustDo(200, "GET", "/_matrix/client/v3/joined_rooms", nil)
				found := false
				for _, id := range r.JSON["joined_rooms"].([]any) {
					found = found || id == roomID
				}
				if !found {
					t.Fatalf("joined_rooms lacks %s: %s", roomID, r.Body)
				}
			})
		}
		_ = http.StatusOK
	})
}

// TestJoinContentForgetAndJoinedMembers covers custom member content on
// join, joined_members after leaving, and forgetting a room.
func TestJoinContentForgetAndJoinedMembers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		r := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
		roomID := r.JSON["room_id"].(string)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		bob.MustDo(200, "POST", rp+"/join", map[string]any{"foo": "bar", "reason": "hello"})
		r = alice.MustDo(200, "GET", rp+"/state/m.room.member/"+url.PathEscape(bob.UserID), nil)
		if r.JSON["foo"] != "bar" || r.JSON["reason"] != "hello" || r.JSON["membership"] != "join" {
			t.Fatalf("custom join content: %s", r.Body)
		}
		bob.MustDo(200, "POST", rp+"/leave", map[string]any{})
		if r := bob.Do("GET", rp+"/joined_members", nil); r.Status != 403 {
			t.Fatalf("joined_members after leave: %d", r.Status)
		}
		// Left but not forgotten: history up to the leave is readable.
		bob.MustDo(200, "GET", rp+"/messages?dir=b&limit=5", nil)
		if r := alice.Do("POST", rp+"/forget", map[string]any{}); r.Status != 400 {
			t.Fatalf("forgetting a joined room: %d", r.Status)
		}
		bob.MustDo(200, "POST", rp+"/forget", map[string]any{})
		if r := bob.Do("GET", rp+"/messages?dir=b&limit=5", nil); r.Status != 403 {
			t.Fatalf("messages of a forgotten room: %d", r.Status)
		}
		r = bob.MustDo(200, "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"include_leave":true}}`), nil)
		rooms, _ := r.JSON["rooms"].(map[string]any)
		if leave, _ := rooms["leave"].(map[string]any); leave[roomID] != nil {
			t.Fatalf("forgotten room in include_leave sync")
		}
		// Joining again un-forgets it.
		bob.MustDo(200, "POST", rp+"/join", map[string]any{})
		bob.MustDo(200, "POST", rp+"/leave", map[string]any{})
		bob.MustDo(200, "GET", rp+"/messages?dir=b&limit=5", nil)
	})
}

func TestProfileChangeUpdatesMemberEventsAndTooLargeEvents(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		r := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(r.JSON["room_id"].(string))
		alice.MustDo(200, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/displayname", map[string]any{"displayname": "Alice Liddell"})
		r = alice.MustDo(200, "GET", rp+"/state/m.room.member/"+url.PathEscape(alice.UserID), nil)
		if r.JSON["displayname"] != "Alice Liddell" || r.JSON["membership"] != "join" {
			t.Fatalf("member event after displayname change: %s", r.Body)
		}
		alice.MustDo(200, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/avatar_url", map[string]any{"avatar_url": "mxc://x/y"})
		r = alice.MustDo(200, "GET", rp+"/state/m.room.member/"+url.PathEscape(alice.UserID), nil)
		if r.JSON["avatar_url"] != "mxc://x/y" || r.JSON["displayname"] != "Alice Liddell" {
			t.Fatalf("member event after avatar change: %s", r.Body)
		}
		// Events over 64 KiB are refused with 413.
		big := strings.Repeat("x", 70000)
		if r := alice.Do("PUT", rp+"/send/m.room.message/big", map[string]any{"body": big}); r.Status != 413 || r.ErrCode() != "M_TOO_LARGE" {
			t.Fatalf("large event: %d %s", r.Status, r.ErrCode())
		}
		if r := alice.Do("PUT", rp+"/state/m.big/", map[string]any{"body": big}); r.Status != 413 {
			t.Fatalf("large state event: %d", r.Status)
		}
	})
}

func TestV12CreatorsInPowerLevelsAndCreateEvent(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		for _, v := range []string{"11", "12"} {
			r := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"room_version": v})
			rp := "/_matrix/client/v3/rooms/" + url.PathEscape(r.JSON["room_id"].(string))
			if r := alice.Do("PUT", rp+"/state/m.room.create/", map[string]any{"room_version": v, "entropy": 1}); r.Status != 400 {
				t.Fatalf("v%s: replacing the create event: %d", v, r.Status)
			}
			r = alice.Do("PUT", rp+"/state/m.room.power_levels/", map[string]any{"users": map[string]int{alice.UserID: 100}})
			if want := map[string]int{"11": 200, "12": 400}[v]; r.Status != want {
				t.Fatalf("v%s: creator in power levels: %d, want %d", v, r.Status, want)
			}
		}
	})
}

func TestV12CreateRoomRules(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		create := func(body map[string]any) *testutil.Response {
			body["room_version"] = "12"
			return alice.Do("POST", "/_matrix/client/v3/createRoom", body)
		}
		if r := create(map[string]any{"power_level_content_override": map[string]any{"users": map[string]int{alice.UserID: 100}}}); r.Status != 400 {
			t.Errorf("override listing the creator: %d", r.Status)
		}
		for _, bad := range []any{[]any{1}, []any{"@invalid:dom$ain$.com"}, "x"} {
			if r := create(map[string]any{"creation_content": map[string]any{"additional_creators": bad}}); r.Status != 400 {
				t.Errorf("additional_creators %v: %d", bad, r.Status)
			}
		}
		r := create(map[string]any{"creation_content": map[string]any{"additional_creators": []string{"@foo:example.com"}}})
		if r.Status != 200 {
			t.Fatalf("valid additional_creators: %d %s", r.Status, r.Body)
		}
		pl := alice.MustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(r.JSON["room_id"].(string))+"/state/m.room.power_levels/", nil)
		if pl.JSON["events"].(map[string]any)["m.room.tombstone"] != float64(150) || len(pl.JSON["users"].(map[string]any)) != 0 {
			t.Errorf("v12 default power levels: %s", pl.Body)
		}
	})
}
