package federation_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// loseQueue drops what s still has to send to dest, as if the transactions
// had been lost: dest will only learn of those events by asking.
func loseQueue(t *testing.T, s *testutil.Server, dest string) {
	t.Helper()
	if _, err := s.DB.Exec(context.Background(), `DELETE FROM federation_queue WHERE destination = $1`, dest); err != nil {
		t.Fatal(err)
	}
}

// TestGapsAreFilled makes hs2 miss events: a small gap is filled with
// /get_missing_events, a gap larger than it returns with /state_ids (the
// state at the gap, so that the room's name changed inside it is known).
func TestGapsAreFilled(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		n, srv := startServers(t, b, "hs1", "hs2")
		hs1, hs2 := srv[0], srv[1]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat"})
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		sent := []string{"hello"}
		waitEvent(t, bob, roomID, say(t, alice, roomID, "hello"))

		// A small gap: five messages lost.
		n.Stop(t, hs2)
		for i := range 5 {
			sent = append(sent, fmt.Sprintf("lost %d", i))
			say(t, alice, roomID, sent[len(sent)-1])
		}
		loseQueue(t, hs1, "hs2")
		hs2 = n.Restart(t, hs2)
		sent = append(sent, "after the small gap")
		waitEvent(t, bob, roomID, say(t, alice, roomID, "after the small gap"))
		if got := timeline(t, bob, roomID); !slices.Equal(got, sent) {
			t.Fatalf("after a small gap, bob sees %q, want %q", got, sent)
		}

		// A large gap, with a state change early in it.
		n.Stop(t, hs2)
		for i := range 30 {
			if i == 2 {
				setState(t, alice, roomID, "m.room.name", "", map[string]any{"name": "renamed in the gap"})
			}
			say(t, alice, roomID, fmt.Sprintf("lost in the large gap %d", i))
		}
		loseQueue(t, hs1, "hs2")
		hs2 = n.Restart(t, hs2)
		waitEvent(t, bob, roomID, say(t, alice, roomID, "after the large gap"))
		if got := stateOn(t, hs2, roomID, "m.room.name", "")["name"]; got != "renamed in the gap" {
			t.Fatalf("room name on hs2 after the gap: %v", got)
		}
		got := timeline(t, bob, roomID)
		if len(got) < 20 || got[len(got)-1] != "after the large gap" {
			t.Fatalf("after a large gap, bob sees %q", got)
		}
		// The room goes on from there, both ways.
		waitEvent(t, alice, roomID, say(t, bob, roomID, "bob after the gaps"))
		waitEvent(t, bob, roomID, say(t, alice, roomID, "alice after the gaps"))
		if a, b := currentState(t, hs1, roomID), currentState(t, hs2, roomID); fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("state differs:\n%v\n%v", a, b)
		}
	})
}

// TestBackfill joins a room with a long history: paging back through
// /messages past the join fetches the history from the other server, in
// order, until the room's creation.
func TestBackfill(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		_, srv := startServers(t, b, "hs1", "hs2")
		hs1, hs2 := srv[0], srv[1]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat"})
		var sent []string // messages, oldest first
		for i := range 80 {
			sent = append(sent, fmt.Sprintf("history %d", i))
			say(t, alice, roomID, sent[i])
		}
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		sent = append(sent, "after the join")
		waitEvent(t, bob, roomID, say(t, alice, roomID, "after the join"))
		if got := timeline(t, bob, roomID); !slices.Equal(got, sent) {
			t.Fatalf("bob's timeline\n%q\nwant\n%q", got, sent)
		}
		// The history stays in place: paging again asks no one.
		if got := timeline(t, bob, roomID); !slices.Equal(got, sent) {
			t.Fatalf("bob's timeline the second time\n%q", got)
		}
		// It starts with the room's creation, as on hs1.
		for _, c := range []*testutil.Client{alice, bob} {
			r := c.MustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=f&limit=1", nil)
			chunk, _ := r.JSON["chunk"].([]any)
			if len(chunk) != 1 || chunk[0].(map[string]any)["type"] != "m.room.create" {
				t.Fatalf("%s: the timeline starts with %s", c.UserID, r.Body)
			}
		}
	})
}
