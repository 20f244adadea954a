package push_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

func TestCountsRiseWithMessagesAndMentionsAndFallWithReceipts(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		join(t, carol, roomID)
		wantCounts(t, bob, roomID, 0, 0)

		say(t, alice, roomID, "one")
		wantCounts(t, bob, roomID, 1, 0)
		second := say(t, alice, roomID, "two")
		wantCounts(t, bob, roomID, 2, 0)
		mentionID := mention(t, alice, roomID, bob.UserID)
		wantCounts(t, bob, roomID, 3, 1)
		wantCounts(t, carol, roomID, 3, 0)
		// The sender's own messages never count for them.
		wantCounts(t, alice, roomID, 0, 0)

		// A receipt on the second message leaves the mention unread.
		receipt(t, bob, roomID, "m.read", second, "")
		wantCounts(t, bob, roomID, 1, 1)
		// A private receipt behind the public one changes nothing; one
		// ahead of it reads the rest.
		receipt(t, bob, roomID, "m.read.private", second, "")
		wantCounts(t, bob, roomID, 1, 1)
		receipt(t, bob, roomID, "m.read.private", mentionID, "")
		wantCounts(t, bob, roomID, 0, 0)
		// Sending a message marks the room read for the sender.
		say(t, alice, roomID, "three")
		wantCounts(t, carol, roomID, 4, 0)
		say(t, carol, roomID, "reply")
		wantCounts(t, carol, roomID, 0, 0)
	})
}

func TestCountsComeWithTheirEventInSync(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		since := bob.MustDo(200, "GET", "/_matrix/client/v3/sync", nil).JSON["next_batch"].(string)
		for i := 1; i <= 3; i++ {
			done := make(chan map[string]any, 1)
			go func() {
				done <- bob.MustDo(200, "GET", "/_matrix/client/v3/sync?timeout=10000&since="+url.QueryEscape(since), nil).JSON
			}()
			time.Sleep(50 * time.Millisecond)
			id := say(t, alice, roomID, fmt.Sprint("message ", i))
			var resp map[string]any
			select {
			case resp = <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("sync not woken")
			}
			since = resp["next_batch"].(string)
			evs, _ := dig(resp, "rooms", "join", roomID, "timeline", "events").([]any)
			if len(evs) == 0 || evs[len(evs)-1].(map[string]any)["event_id"] != id {
				t.Fatalf("response %d lacks the message: %v", i, resp["rooms"])
			}
			if n := dig(resp, "rooms", "join", roomID, "unread_notifications", "notification_count"); n != float64(i) {
				t.Fatalf("response %d: notification_count %v, want %d", i, n, i)
			}
		}
	})
}

func TestCountsFollowRulesIgnoresAndMembership(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		join(t, carol, roomID)
		// A room rule without actions mutes the room.
		bob.MustDo(200, "PUT", rulesBase+"global/room/"+url.PathEscape(roomID), map[string]any{"actions": []any{}})
		say(t, alice, roomID, "muted")
		wantCounts(t, bob, roomID, 0, 0)
		bob.MustDo(200, "DELETE", rulesBase+"global/room/"+url.PathEscape(roomID), nil)
		say(t, alice, roomID, "unmuted")
		wantCounts(t, bob, roomID, 1, 0)
		// Messages of ignored users do not count.
		bob.MustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(bob.UserID)+"/account_data/m.ignored_user_list",
			map[string]any{"ignored_users": map[string]any{carol.UserID: map[string]any{}}})
		say(t, carol, roomID, "ignored")
		wantCounts(t, bob, roomID, 1, 0)
		// Notices are suppressed; disabling the rule lets them count.
		sendEvent(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "n"})
		wantCounts(t, bob, roomID, 1, 0)
		bob.MustDo(200, "PUT", rulesBase+"global/override/.m.rule.suppress_notices/enabled", map[string]any{"enabled": false})
		sendEvent(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "n"})
		wantCounts(t, bob, roomID, 2, 0)
		// Leaving clears the room's counts; after rejoining, only new
		// messages count.
		bob.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{})
		say(t, alice, roomID, "while away")
		join(t, bob, roomID)
		wantCounts(t, bob, roomID, 0, 0)
		say(t, alice, roomID, "back")
		wantCounts(t, bob, roomID, 1, 0)
		// An invite notifies the invitee.
		dave := srv.NewUser(t, "dave", "pw")
		alice.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", map[string]any{"user_id": dave.UserID})
		eventually(t, "invite notification", func() error {
			if l, _ := notifications(t, dave, ""); len(l) != 1 || dig(l[0], "event", "type") != "m.room.member" {
				return fmt.Errorf("dave's notifications: %v", l)
			}
			return nil
		})
	})
}
