package push_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// gatewayNote is the notification object of a /notify request.
type gatewayNote struct {
	EventID           string          `json:"event_id"`
	RoomID            string          `json:"room_id"`
	Type              string          `json:"type"`
	Sender            string          `json:"sender"`
	SenderDisplayName string          `json:"sender_display_name"`
	RoomName          string          `json:"room_name"`
	Prio              string          `json:"prio"`
	Content           json.RawMessage `json:"content"`
	Counts            struct {
		Unread int `json:"unread"`
	} `json:"counts"`
	Devices []struct {
		AppID   string                     `json:"app_id"`
		Pushkey string                     `json:"pushkey"`
		Data    map[string]any             `json:"data"`
		Tweaks  map[string]json.RawMessage `json:"tweaks"`
	} `json:"devices"`
}

// testGateway is a push gateway: it records the notifications it accepts
// and can fail or reject on demand.
type testGateway struct {
	srv      *httptest.Server
	fail     atomic.Bool // answer 500
	attempts atomic.Int64

	mu       sync.Mutex
	notes    []gatewayNote
	rejected []string
}

func newTestGateway(t *testing.T) *testGateway {
	g := &testGateway{}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.attempts.Add(1)
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/push/v1/notify" {
			http.Error(w, "wrong endpoint", http.StatusNotFound)
			return
		}
		if g.fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		var body struct {
			Notification gatewayNote `json:"notification"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		g.mu.Lock()
		g.notes = append(g.notes, body.Notification)
		rej := g.rejected
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"rejected": append([]string{}, rej...)})
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *testGateway) url() string { return g.srv.URL + "/_matrix/push/v1/notify" }

// eventNotes returns the notifications about events received so far.
func (g *testGateway) eventNotes() []gatewayNote {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gatewayNote
	for _, n := range g.notes {
		if n.EventID != "" {
			out = append(out, n)
		}
	}
	return out
}

// waitFor waits until the gateway received a notification about eventID
// and returns it.
func (g *testGateway) waitFor(t *testing.T, eventID string) gatewayNote {
	t.Helper()
	var found gatewayNote
	eventually(t, "notification for "+eventID, func() error {
		for _, n := range g.eventNotes() {
			if n.EventID == eventID {
				found = n
				return nil
			}
		}
		return fmt.Errorf("not received; got %d notifications", len(g.eventNotes()))
	})
	return found
}

// exactlyOnce checks that each event was notified once and nothing else
// was.
func (g *testGateway) exactlyOnce(t *testing.T, eventIDs ...string) {
	t.Helper()
	seen := map[string]int{}
	for _, n := range g.eventNotes() {
		seen[n.EventID]++
	}
	for _, id := range eventIDs {
		if seen[id] != 1 {
			t.Errorf("event %s notified %d times", id, seen[id])
		}
		delete(seen, id)
	}
	if len(seen) > 0 {
		t.Errorf("unexpected notifications: %v", seen)
	}
}

func TestGatewayDelivery(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		gw := newTestGateway(t)
		srv := testutil.Start(t, b, allowPrivate)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		carol := srv.NewUser(t, "carol", "pw")
		alice.MustDo(200, "PUT", "/_matrix/client/v3/profile/"+alice.UserID+"/displayname", map[string]any{"displayname": "Alice"})
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Tea room"})
		join(t, bob, roomID)
		join(t, carol, roomID)
		muted := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, muted)
		bob.MustDo(200, "PUT", rulesBase+"global/room/"+muted, map[string]any{"actions": []any{}})
		body := pusherBody("com.example.app", "bob-key", gw.url())
		body["data"] = map[string]any{"url": gw.url(), "custom": "x"}
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", body)

		// A message: notified with the event's details and the badge.
		msg := say(t, alice, roomID, "hello")
		n := gw.waitFor(t, msg)
		if n.RoomID != roomID || n.Type != "m.room.message" || n.Sender != alice.UserID || n.SenderDisplayName != "Alice" ||
			n.RoomName != "Tea room" || n.Counts.Unread != 1 || n.Prio != "low" || len(n.Content) == 0 {
			t.Errorf("message notification: %+v", n)
		}
		if len(n.Devices) != 1 || n.Devices[0].Pushkey != "bob-key" || n.Devices[0].AppID != "com.example.app" ||
			n.Devices[0].Data["custom"] != "x" || n.Devices[0].Data["url"] != nil || len(n.Devices[0].Tweaks) != 0 {
			t.Errorf("devices: %+v", n.Devices)
		}
		// A message in the muted room: nothing. A mention: highlight and
		// sound tweaks, high priority, the badge at 2.
		quiet := say(t, alice, muted, "psst")
		men := mention(t, alice, roomID, bob.UserID)
		n = gw.waitFor(t, men)
		if n.Counts.Unread != 2 || n.Prio != "high" || string(n.Devices[0].Tweaks["highlight"]) != "true" || string(n.Devices[0].Tweaks["sound"]) != `"default"` {
			t.Errorf("mention notification: %+v", n)
		}
		// Another user's message to the others is not bob's; bob's own
		// messages are never pushed to him.
		say(t, bob, roomID, "me")
		last := say(t, carol, roomID, "carol here")
		n = gw.waitFor(t, last)
		if n.Counts.Unread != 1 {
			// bob's message marked the room read for him.
			t.Errorf("badge after bob spoke: %d", n.Counts.Unread)
		}
		gw.exactlyOnce(t, msg, men, last)
		_ = quiet

		// event_id_only.
		body["data"] = map[string]any{"url": gw.url(), "format": "event_id_only"}
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", body)
		short := say(t, alice, roomID, "secret")
		n = gw.waitFor(t, short)
		if n.Type != "" || n.Sender != "" || len(n.Content) != 0 || n.RoomID != roomID || n.Counts.Unread != 2 {
			t.Errorf("event_id_only notification: %+v", n)
		}
		// A read receipt sends the lowered badge alone.
		receipt(t, bob, roomID, "m.read", short, "")
		eventually(t, "badge update", func() error {
			gw.mu.Lock()
			defer gw.mu.Unlock()
			if last := gw.notes[len(gw.notes)-1]; last.EventID != "" || last.Counts.Unread != 0 {
				return fmt.Errorf("last request %+v", last)
			}
			return nil
		})
	})
}

func TestGatewayRetriesAndRejections(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		gw := newTestGateway(t)
		srv := testutil.Start(t, b, allowPrivate)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "k1", gw.url()))
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "k2", gw.url()))

		// The gateway fails: the notification is retried until it passes.
		gw.fail.Store(true)
		first := say(t, alice, roomID, "one")
		eventually(t, "a failed attempt", func() error {
			if gw.attempts.Load() < 2 {
				return fmt.Errorf("%d attempts", gw.attempts.Load())
			}
			return nil
		})
		gw.fail.Store(false)
		gw.waitFor(t, first)
		eventually(t, "both pushers", func() error {
			if n := len(gw.eventNotes()); n != 2 {
				return fmt.Errorf("%d notifications", n)
			}
			return nil
		})
		// The gateway rejects k1: that pusher is removed, k2 stays.
		gw.mu.Lock()
		gw.rejected = []string{"k1"}
		gw.mu.Unlock()
		say(t, alice, roomID, "two")
		eventually(t, "rejected pusher removed", func() error {
			if keys := pushkeys(t, bob); len(keys) != 1 || keys[0] != "k2" {
				return fmt.Errorf("pushers %v", keys)
			}
			return nil
		})
	})
}

func TestGatewayExactlyOnceAcrossRestart(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		gw := newTestGateway(t)
		srv := testutil.Start(t, b, allowPrivate)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		bob.MustDo(200, "POST", "/_matrix/client/v3/pushers/set", pusherBody("app", "k", gw.url()))

		delivered := say(t, alice, roomID, "before the restart")
		gw.waitFor(t, delivered)
		// The gateway goes down with a notification pending; the server
		// restarts; then the gateway comes back.
		gw.fail.Store(true)
		pending := say(t, alice, roomID, "pending")
		eventually(t, "a failed attempt", func() error {
			if gw.attempts.Load() < 2 {
				return fmt.Errorf("%d attempts", gw.attempts.Load())
			}
			return nil
		})
		srv.Restart(t)
		gw.fail.Store(false)
		gw.waitFor(t, pending)
		after := say(t, alice, roomID, "after the restart")
		n := gw.waitFor(t, after)
		if n.Counts.Unread != 3 {
			t.Errorf("badge after the restart: %d", n.Counts.Unread)
		}
		gw.exactlyOnce(t, delivered, pending, after)
	})
}

func TestEvaluatorResumesAfterRestart(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)
		say(t, alice, roomID, "evaluated")
		wantCounts(t, bob, roomID, 1, 0)
		// The evaluator stops (as if the process died): these events are
		// stored but not evaluated.
		srv.Push.Stop()
		say(t, alice, roomID, "pending one")
		mention(t, alice, roomID, bob.UserID)
		srv = srv.Restart(t)
		// After the restart they are counted, once.
		wantCounts(t, bob, roomID, 3, 1)
		if l, _ := notifications(t, bob, ""); len(l) != 3 {
			t.Errorf("%d notifications, want 3", len(l))
		}
		srv.Restart(t)
		wantCounts(t, bob, roomID, 3, 1)
	})
}
