package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/testutil"
)

// ephemeral returns the ephemeral events of type typ in a room of c's
// initial /sync.
func ephemeral(t *testing.T, c *testutil.Client, roomID, typ string) []map[string]any {
	t.Helper()
	r := c.MustDo(200, "GET", "/_matrix/client/v3/sync", nil)
	join, _ := r.JSON["rooms"].(map[string]any)["join"].(map[string]any)
	room, _ := join[roomID].(map[string]any)
	eph, _ := room["ephemeral"].(map[string]any)
	evs, _ := eph["events"].([]any)
	var out []map[string]any
	for _, raw := range evs {
		if ev := raw.(map[string]any); ev["type"] == typ {
			out = append(out, ev)
		}
	}
	return out
}

// typingUsers lists who c sees typing in a room.
func typingUsers(t *testing.T, c *testutil.Client, roomID string) []string {
	t.Helper()
	var out []string
	for _, ev := range ephemeral(t, c, roomID, "m.typing") {
		ids, _ := ev["content"].(map[string]any)["user_ids"].([]any)
		for _, id := range ids {
			out = append(out, id.(string))
		}
	}
	return out
}

// TestChatAcrossServers runs a room whose members are on two servers:
// messages go both ways through the sender and /send, and so do typing
// notifications, read receipts and presence.
func TestChatAcrossServers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		_, srv := startServers(t, b, "hs1", "hs2")
		hs1, hs2 := srv[0], srv[1]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat"})
		joinOver(t, hs1, hs2, roomID, bob.UserID)

		// Messages both ways, in order.
		var sent []string
		for i := range 5 {
			sent = append(sent, fmt.Sprintf("from alice %d", i))
			say(t, alice, roomID, sent[len(sent)-1])
		}
		last := say(t, alice, roomID, "alice done")
		sent = append(sent, "alice done")
		waitEvent(t, bob, roomID, last)
		reply := say(t, bob, roomID, "hello from hs2")
		sent = append(sent, "hello from hs2")
		waitEvent(t, alice, roomID, reply)
		for _, c := range []*testutil.Client{alice, bob} {
			if got := timeline(t, c, roomID); !slices.Equal(got, sent) {
				t.Fatalf("%s timeline %q, want %q", c.UserID, got, sent)
			}
		}
		if a, b := currentState(t, hs1, roomID), currentState(t, hs2, roomID); fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("state differs:\n%v\n%v", a, b)
		}

		// Typing, both ways, and its end.
		typingPath := func(c *testutil.Client) string {
			return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/typing/" + url.PathEscape(c.UserID)
		}
		alice.MustDo(200, "PUT", typingPath(alice), map[string]any{"typing": true, "timeout": 20000})
		waitUntil(t, "alice typing on hs2", func() bool { return slices.Contains(typingUsers(t, bob, roomID), alice.UserID) })
		bob.MustDo(200, "PUT", typingPath(bob), map[string]any{"typing": true, "timeout": 20000})
		waitUntil(t, "bob typing on hs1", func() bool { return slices.Contains(typingUsers(t, alice, roomID), bob.UserID) })
		alice.MustDo(200, "PUT", typingPath(alice), map[string]any{"typing": false})
		waitUntil(t, "alice stops typing on hs2", func() bool { return !slices.Contains(typingUsers(t, bob, roomID), alice.UserID) })

		// Read receipts.
		bob.MustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/receipt/m.read/"+url.PathEscape(last), map[string]any{})
		waitUntil(t, "bob's receipt on hs1", func() bool {
			for _, ev := range ephemeral(t, alice, roomID, "m.receipt") {
				byType, _ := ev["content"].(map[string]any)[last].(map[string]any)
				users, _ := byType["m.read"].(map[string]any)
				if _, ok := users[bob.UserID]; ok {
					return true
				}
			}
			return false
		})

		// Presence.
		alice.MustDo(200, "PUT", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status",
			map[string]any{"presence": "unavailable", "status_msg": "lunch"})
		waitUntil(t, "alice's presence on hs2", func() bool {
			r := bob.Do("GET", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", nil)
			return r.Status == 200 && r.JSON["presence"] == "unavailable" && r.JSON["status_msg"] == "lunch"
		})
	})
}

// TestSenderSurvivesRestarts stops one server of a room while the others
// keep talking, restarts the sending server while its queue holds what the
// stopped one has not received, then restarts the stopped one: every
// message arrives, in order, once; and the server that stayed up received
// everything while the other was down.
func TestSenderSurvivesRestarts(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n, srv := startServers(t, b, "hs1", "hs2", "hs3")
		hs1, hs2, hs3 := srv[0], srv[1], srv[2]
		alice, bob, carol := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw"), hs3.NewUser(t, "carol", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat"})
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		joinOver(t, hs1, hs3, roomID, carol.UserID)
		var sent []string
		talk := func(c *testutil.Client, body string) string {
			sent = append(sent, body)
			return say(t, c, roomID, body)
		}
		waitEvent(t, carol, roomID, talk(alice, "before"))

		n.Stop(t, hs3)
		var last string
		for i := range 10 {
			last = talk(alice, fmt.Sprintf("while hs3 is down %d", i))
		}
		waitEvent(t, bob, roomID, last) // hs3 being down does not hold hs2 up
		last = talk(bob, "bob while hs3 is down")
		waitEvent(t, alice, roomID, last)

		// hs1 restarts with messages for hs3 in its queue.
		hs1 = n.Restart(t, hs1)
		for i := range 5 {
			last = talk(alice, fmt.Sprintf("after hs1 restarted %d", i))
		}
		waitEvent(t, bob, roomID, last)

		hs3 = n.Restart(t, hs3)
		waitEvent(t, carol, roomID, last)
		for _, c := range []*testutil.Client{alice, bob, carol} {
			if got := timeline(t, c, roomID); !slices.Equal(got, sent) {
				t.Fatalf("%s timeline\n%q\nwant\n%q", c.UserID, got, sent)
			}
		}
		for _, s := range []*testutil.Server{hs1, hs2} {
			waitUntil(t, "an empty send queue on "+s.Config.ServerName, func() bool {
				var rows int
				if err := s.DB.QueryRow(context.Background(), `SELECT COUNT(*) FROM federation_queue`).Scan(&rows); err != nil {
					t.Fatal(err)
				}
				return rows == 0
			})
		}
		if a, c := currentState(t, hs1, roomID), currentState(t, hs3, roomID); fmt.Sprint(a) != fmt.Sprint(c) {
			t.Fatalf("state differs:\n%v\n%v", a, c)
		}
	})
}

// TestEDUSource sends EDUs that another domain keeps (to-device messages of
// the E2EE outbox) through an EDU source: they are acknowledged to the
// source only once a destination took them, and reach its hook.
func TestEDUSource(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n, srv := startServers(t, b, "hs1", "hs2", "hs3")
		hs1, hs2, hs3 := srv[0], srv[1], srv[2]
		n.Stop(t, hs3)
		got := make(chan string, 4)
		hs2.RoomFederation.EDUHooks.DirectToDevice = func(_ context.Context, origin string, content json.RawMessage) {
			got <- origin + " " + string(content)
		}
		var mu gosync.Mutex
		edu := json.RawMessage(`{"edu_type":"m.direct_to_device","content":{"sender":"@alice:hs1","type":"m.test","message_id":"m1","messages":{}}}`)
		pending := map[string]bool{"hs2": true, "hs3": true}
		asked := map[string]int{}
		hs1.RoomFederation.Sender.AddEDUSource(federation.EDUSource{
			Pending: func(ctx context.Context, dest string, limit int) ([]json.RawMessage, func(context.Context) error, error) {
				mu.Lock()
				defer mu.Unlock()
				asked[dest]++
				if !pending[dest] {
					return nil, nil, nil
				}
				return []json.RawMessage{edu}, func(context.Context) error {
					mu.Lock()
					defer mu.Unlock()
					delete(pending, dest)
					return nil
				}, nil
			},
		})
		hs1.RoomFederation.Sender.Wake("hs2")
		hs1.RoomFederation.Sender.Wake("hs3")
		select {
		case s := <-got:
			if !strings.HasPrefix(s, "hs1 ") || !strings.Contains(s, `"message_id":"m1"`) {
				t.Fatalf("to-device EDU: %s", s)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the EDU never arrived")
		}
		waitUntil(t, "the acknowledgement by hs2 and retries to hs3", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return !pending["hs2"] && asked["hs3"] >= 2
		})
		mu.Lock()
		defer mu.Unlock()
		if !pending["hs3"] {
			t.Fatal("EDUs acknowledged while their destination was down")
		}
	})
}
