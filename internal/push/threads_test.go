package push_test

import (
	"fmt"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// threadFilter asks /sync for per-thread counts.
const threadFilter = `{"room":{"timeline":{"unread_thread_notifications":true}}}`

// wantThreadCounts checks the room's counts with and without per-thread
// counts: total (notifications, highlights) without; main and the
// thread's with (a zero thread is left out).
func wantThreadCounts(t *testing.T, c *testutil.Client, roomID, threadID string, total, main, thread [2]float64) {
	t.Helper()
	eventually(t, "thread counts", func() error {
		got := syncCounts(t, c, roomID, "")
		if got.notifs != total[0] || got.highlights != total[1] || got.threads != nil {
			return fmt.Errorf("room counts %+v, want %v and no thread counts", got, total)
		}
		got = syncCounts(t, c, roomID, threadFilter)
		if got.notifs != main[0] || got.highlights != main[1] {
			return fmt.Errorf("main timeline counts %+v, want %v", got, main)
		}
		if th, ok := got.threads[threadID]; thread == [2]float64{} && ok || thread != [2]float64{} && th != thread {
			return fmt.Errorf("thread counts %v, want %v", got.threads, thread)
		}
		return nil
	})
}

func TestThreadedCountsAndReceipts(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		bob := srv.NewUser(t, "bob", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		join(t, bob, roomID)

		// A (main) ← B, C (mentions bob), E in a thread on A; D (main,
		// mentions bob); F references A (main); G reacts to F (no
		// notification).
		a := say(t, alice, roomID, "Hello world!")
		threadB := sayInThread(t, alice, roomID, a, "Start thread!", nil)
		sayInThread(t, alice, roomID, a, "Thread response", map[string]any{"m.mentions": map[string]any{"user_ids": []any{bob.UserID}}})
		d := mention(t, alice, roomID, bob.UserID)
		sayInThread(t, alice, roomID, a, "End thread", nil)
		f := sendEvent(t, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "Reference!",
			"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": a}})
		g := sendEvent(t, alice, roomID, "m.reaction", map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": f, "key": "👍"}})

		wantThreadCounts(t, bob, roomID, a, [2]float64{6, 2}, [2]float64{3, 1}, [2]float64{3, 1})
		// A main-timeline receipt on A reads only A.
		receipt(t, bob, roomID, "m.read", a, "main")
		wantThreadCounts(t, bob, roomID, a, [2]float64{5, 2}, [2]float64{2, 1}, [2]float64{3, 1})
		// A receipt in the thread on B reads only B.
		receipt(t, bob, roomID, "m.read", threadB, a)
		wantThreadCounts(t, bob, roomID, a, [2]float64{4, 2}, [2]float64{2, 1}, [2]float64{2, 1})
		// An unthreaded receipt on D reads everything up to D, threads too.
		receipt(t, bob, roomID, "m.read", d, "")
		wantThreadCounts(t, bob, roomID, a, [2]float64{2, 0}, [2]float64{1, 0}, [2]float64{1, 0})
		// A thread receipt on G (in the main timeline, after E) reads the
		// whole thread, and leaves the main timeline alone.
		receipt(t, bob, roomID, "m.read", g, a)
		wantThreadCounts(t, bob, roomID, a, [2]float64{1, 0}, [2]float64{1, 0}, [2]float64{})
	})
}
