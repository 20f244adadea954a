package push_test

import (
	"net/url"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// notifications fetches GET /notifications with a query.
func notifications(t *testing.T, c *testutil.Client, query string) (list []map[string]any, next string) {
	t.Helper()
	r := c.MustDo(200, "GET", "/_matrix/client/v3/notifications"+query, nil)
	for _, n := range r.JSON["notifications"].([]any) {
		list = append(list, n.(map[string]any))
	}
	next, _ = r.JSON["next_token"].(string)
	return list, next
}

func eventIDs(list []map[string]any) []string {
	var out []string
	for _, n := range list {
		out = append(out, n["event"].(map[string]any)["event_id"].(string))
	}
	return out
}

func TestNotificationsList(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		join(t, carol, roomID)

		first := say(t, alice, roomID, "one")
		sendEvent(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "bot"}) // suppressed
		sendEvent(t, alice, roomID, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": first, "key": "x"}})
		second := mention(t, alice, roomID, bob.UserID)
		third := say(t, alice, roomID, "three")
		wantCounts(t, bob, roomID, 3, 1)

		list, next := notifications(t, bob, "")
		if got := eventIDs(list); len(got) != 3 || got[0] != third || got[1] != second || got[2] != first || next != "" {
			t.Fatalf("notifications %v (next %q), want %v", got, next, []string{third, second, first})
		}
		n := list[1]
		ev := n["event"].(map[string]any)
		if n["room_id"] != roomID || n["read"] != false || ev["room_id"] != nil || ev["sender"] != alice.UserID || ev["type"] != "m.room.message" {
			t.Errorf("notification: %v", n)
		}
		if acts, _ := n["actions"].([]any); len(acts) != 3 || acts[0] != "notify" {
			t.Errorf("actions of the mention: %v", n["actions"])
		}
		if ts, _ := n["ts"].(float64); ts <= 0 {
			t.Errorf("ts: %v", n["ts"])
		}
		// only=highlight.
		if got := eventIDs(mustList(notifications(t, bob, "?only=highlight"))); len(got) != 1 || got[0] != second {
			t.Errorf("highlights %v", got)
		}
		// Pagination.
		page, next := notifications(t, bob, "?limit=2")
		if got := eventIDs(page); len(got) != 2 || got[0] != third || next == "" {
			t.Fatalf("page 1 %v next %q", got, next)
		}
		page, next = notifications(t, bob, "?limit=2&from="+url.QueryEscape(next))
		if got := eventIDs(page); len(got) != 1 || got[0] != first || next != "" {
			t.Fatalf("page 2 %v next %q", got, next)
		}
		// A receipt marks them read.
		receipt(t, bob, roomID, "m.read", second, "")
		list, _ = notifications(t, bob, "")
		if list[0]["read"] != false || list[1]["read"] != true || list[2]["read"] != true {
			t.Errorf("read flags: %v %v %v", list[0]["read"], list[1]["read"], list[2]["read"])
		}
		// The sender has none; carol has no highlight.
		if l, _ := notifications(t, alice, ""); len(l) != 0 {
			t.Errorf("the sender has notifications: %v", l)
		}
		if l, _ := notifications(t, carol, "?only=highlight"); len(l) != 0 {
			t.Errorf("carol has highlights: %v", l)
		}
		// Bad parameters.
		for _, q := range []string{"?limit=x", "?limit=-1", "?from=abc"} {
			if r := bob.Do("GET", "/_matrix/client/v3/notifications"+q, nil); r.Status != 400 || r.ErrCode() != "M_INVALID_PARAM" {
				t.Errorf("%s: %d %s", q, r.Status, r.Body)
			}
		}
	})
}

func mustList(list []map[string]any, _ string) []map[string]any { return list }
