package push_test

import (
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

// txnSeq makes transaction IDs unique within a test binary.
var txnSeq atomic.Int64

// createRoom creates a room as c and returns its ID.
func createRoom(t testing.TB, c *testutil.Client, body map[string]any) string {
	t.Helper()
	return c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body).JSON["room_id"].(string)
}

// join joins c to a room.
func join(t testing.TB, c *testutil.Client, roomID string) {
	t.Helper()
	c.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
}

// sendEvent sends a message event of any type and returns its ID.
func sendEvent(t testing.TB, c *testutil.Client, roomID, typ string, content map[string]any) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/%s/t%d", url.PathEscape(roomID), typ, txnSeq.Add(1))
	return c.MustDo(200, "PUT", path, content).JSON["event_id"].(string)
}

// say sends a text message.
func say(t testing.TB, c *testutil.Client, roomID, body string) string {
	t.Helper()
	return sendEvent(t, c, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// sayInThread sends a text message in a thread.
func sayInThread(t testing.TB, c *testutil.Client, roomID, root, body string, extra map[string]any) string {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
	for k, v := range extra {
		content[k] = v
	}
	return sendEvent(t, c, roomID, "m.room.message", content)
}

// mention sends a message that mentions users through m.mentions.
func mention(t testing.TB, c *testutil.Client, roomID string, users ...string) string {
	t.Helper()
	ids := make([]any, len(users))
	for i, u := range users {
		ids[i] = u
	}
	return sendEvent(t, c, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hey",
		"m.mentions": map[string]any{"user_ids": ids}})
}

// receipt posts a read receipt (threadID "" for an unthreaded one).
func receipt(t testing.TB, c *testutil.Client, roomID, typ, eventID, threadID string) {
	t.Helper()
	body := map[string]any{}
	if threadID != "" {
		body["thread_id"] = threadID
	}
	c.MustDo(200, "POST", fmt.Sprintf("/_matrix/client/v3/rooms/%s/receipt/%s/%s", url.PathEscape(roomID), typ, url.PathEscape(eventID)), body)
}

// counts is a room's unread counts in a sync response.
type counts struct {
	notifs, highlights float64
	threads            map[string][2]float64
	present            bool
}

// syncCounts runs an initial sync (with a filter if given) and returns the
// room's counts.
func syncCounts(t testing.TB, c *testutil.Client, roomID, filter string) counts {
	t.Helper()
	path := "/_matrix/client/v3/sync?timeout=0"
	if filter != "" {
		path += "&filter=" + url.QueryEscape(filter)
	}
	r := c.MustDo(200, "GET", path, nil)
	room, _ := dig(r.JSON, "rooms", "join", roomID).(map[string]any)
	var out counts
	if un, ok := room["unread_notifications"].(map[string]any); ok {
		out.present = true
		out.notifs, _ = un["notification_count"].(float64)
		out.highlights, _ = un["highlight_count"].(float64)
	}
	if th, ok := room["unread_thread_notifications"].(map[string]any); ok {
		out.threads = map[string][2]float64{}
		for id, v := range th {
			m := v.(map[string]any)
			n, _ := m["notification_count"].(float64)
			h, _ := m["highlight_count"].(float64)
			out.threads[id] = [2]float64{n, h}
		}
	}
	return out
}

// wantCounts checks a room's counts in sync.
func wantCounts(t testing.TB, c *testutil.Client, roomID string, notifs, highlights int) {
	t.Helper()
	got := syncCounts(t, c, roomID, "")
	if !got.present || got.notifs != float64(notifs) || got.highlights != float64(highlights) {
		t.Fatalf("unread_notifications = %+v, want %d notifications, %d highlights", got, notifs, highlights)
	}
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

// eventually retries check until it returns nil or the deadline passes.
func eventually(t testing.TB, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
