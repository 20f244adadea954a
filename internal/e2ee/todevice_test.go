package e2ee_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// sendToDevice sends messages of type m.test with a transaction ID.
func sendToDevice(t testing.TB, c *testutil.Client, txnID string, messages map[string]any) {
	t.Helper()
	c.MustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/"+url.PathEscape(txnID), map[string]any{"messages": messages})
}

// toDevice lists the "n" content values of the m.test to-device events of
// a sync response, checking their sender.
func toDevice(t testing.TB, resp map[string]any, sender string) []float64 {
	t.Helper()
	return testEvents(t, dig(resp, "to_device", "events"), sender)
}

// testEvents lists the "n" content values of a list of m.test events,
// checking their sender.
func testEvents(t testing.TB, list any, sender string) []float64 {
	t.Helper()
	evs, _ := list.([]any)
	var out []float64
	for _, e := range evs {
		ev := e.(map[string]any)
		if ev["type"] != "m.test" || ev["sender"] != sender {
			t.Fatalf("unexpected to-device event %v", ev)
		}
		out = append(out, dig(ev, "content", "n").(float64))
	}
	return out
}

// session logs userID in on a new device with the given ID.
func session(t testing.TB, srv *testutil.Server, userID, deviceID string) *testutil.Client {
	t.Helper()
	sess, err := srv.Accounts.NewSession(t.Context(), userID, deviceID, "", "127.0.0.1", "test", false)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	c.UserID, c.DeviceID, c.AccessToken = userID, deviceID, sess.AccessToken
	return c
}

func TestSendToDevice(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		bob := srv.NewUser(t, "bob", "pw")
		alice1 := srv.NewUser(t, "alice", "pw")
		alice2 := session(t, srv, alice1.UserID, "ALICE2")

		sendToDevice(t, bob, "t1", map[string]any{alice1.UserID: map[string]any{"*": map[string]any{"n": 1}}})
		sendToDevice(t, bob, "t1", map[string]any{alice1.UserID: map[string]any{"*": map[string]any{"n": 1}}}) // a retry
		sendToDevice(t, bob, "t2", map[string]any{alice1.UserID: map[string]any{alice1.DeviceID: map[string]any{"n": 2}, "NOSUCHDEVICE": map[string]any{"n": 9}}})
		// A device ID wins over "*" for that device.
		sendToDevice(t, bob, "t3", map[string]any{alice1.UserID: map[string]any{"*": map[string]any{"n": 3}, "ALICE2": map[string]any{"n": 4}}})

		s1 := &syncer{c: alice1}
		if got := toDevice(t, s1.sync(t), bob.UserID); !slices.Equal(got, []float64{1, 2, 3}) {
			t.Fatalf("device 1 got %v, want [1 2 3]", got)
		}
		s2 := &syncer{c: alice2}
		first := s2.sync(t)
		if got := toDevice(t, first, bob.UserID); !slices.Equal(got, []float64{1, 4}) {
			t.Fatalf("device 2 got %v, want [1 4]", got)
		}
		// A response that never arrived: syncing again from the old token
		// (here: none) delivers the messages again.
		lost := &syncer{c: alice2}
		if got := toDevice(t, lost.sync(t), bob.UserID); !slices.Equal(got, []float64{1, 4}) {
			t.Fatalf("device 2 after a lost response got %v, want [1 4]", got)
		}
		// Syncing from the response's token acknowledges and deletes them.
		if got := toDevice(t, s1.sync(t), bob.UserID); len(got) != 0 {
			t.Fatalf("device 1 got %v again", got)
		}
		if got := toDevice(t, (&syncer{c: alice1}).sync(t), bob.UserID); len(got) != 0 {
			t.Fatalf("acknowledged messages came back: %v", got)
		}

		// At most 100 per response; the rest follow.
		for i := range 150 {
			sendToDevice(t, bob, fmt.Sprintf("bulk%d", i), map[string]any{alice1.UserID: map[string]any{alice1.DeviceID: map[string]any{"n": 100 + i}}})
		}
		var got []float64
		for range 3 {
			batch := toDevice(t, s1.sync(t), bob.UserID)
			if len(batch) > 100 {
				t.Fatalf("%d to-device events in one response", len(batch))
			}
			got = append(got, batch...)
		}
		if len(got) != 150 || got[0] != 100 || got[149] != 249 || !slices.IsSorted(got) {
			t.Fatalf("bulk messages: %d, from %v to %v", len(got), got[0], got[len(got)-1])
		}

		// Messages for a deleted device go with it.
		sendToDevice(t, bob, "t4", map[string]any{alice1.UserID: map[string]any{"ALICE2": map[string]any{"n": 5}}})
		if err := srv.Accounts.DeleteDevices(t.Context(), alice1.UserID, []string{"ALICE2"}, ""); err != nil {
			t.Fatal(err)
		}
		alice2 = session(t, srv, alice1.UserID, "ALICE2")
		if got := toDevice(t, (&syncer{c: alice2}).sync(t), bob.UserID); len(got) != 0 {
			t.Fatalf("a new device with the old ID got %v", got)
		}

		// Messages for users of other servers wait in the outbox.
		sendToDevice(t, bob, "t5", map[string]any{"@carol:remote.example": map[string]any{"*": map[string]any{"n": 6}}})
		out, err := srv.E2EE.PendingRemoteToDevice(t.Context(), "remote.example", 10)
		if err != nil || len(out) != 1 || out[0].Sender != bob.UserID || out[0].Type != "m.test" || string(out[0].Messages["@carol:remote.example"]["*"]) != `{"n":6}` {
			t.Fatalf("outbox: %+v, %v", out, err)
		}
		if err := srv.E2EE.AckRemoteToDevice(t.Context(), "remote.example", out[0].Pos); err != nil {
			t.Fatal(err)
		}
		if out, _ := srv.E2EE.PendingRemoteToDevice(t.Context(), "remote.example", 10); len(out) != 0 {
			t.Fatalf("outbox after the ack: %+v", out)
		}

		const path = "/_matrix/client/v3/sendToDevice/m.test/"
		wantError(t, "no messages", bob.Do("PUT", path+"e1", map[string]any{}), 400, "M_MISSING_PARAM")
		wantError(t, "bad user ID", bob.Do("PUT", path+"e2", map[string]any{"messages": map[string]any{"alice": map[string]any{}}}), 400, "M_INVALID_PARAM")
		wantError(t, "content not an object", bob.Do("PUT", path+"e3", map[string]any{"messages": map[string]any{alice1.UserID: map[string]any{"*": "hi"}}}), 400, "M_BAD_JSON")
		wantError(t, "not JSON", bob.Do("PUT", path+"e4", "messages"), 400, "M_NOT_JSON")
	})
}

func TestToDeviceWakesSyncAndSurvivesRestart(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		bob := srv.NewUser(t, "bob", "pw")
		alice := srv.NewUser(t, "alice", "pw")
		s := &syncer{c: alice}
		s.sync(t)

		// A waiting /sync is woken by the message.
		done := make(chan map[string]any)
		go func() {
			r := alice.Do("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(s.since), nil)
			done <- r.JSON
		}()
		eventually(t, "the /sync request waits", func() bool { return srv.Sync.Notifier().Waiting() > 0 })
		sendToDevice(t, bob, "w1", map[string]any{alice.UserID: map[string]any{alice.DeviceID: map[string]any{"n": 1}}})
		if got := toDevice(t, <-done, bob.UserID); !slices.Equal(got, []float64{1}) {
			t.Fatalf("long-poll got %v, want [1]", got)
		}

		// A message the device never synced survives a restart.
		sendToDevice(t, bob, "r1", map[string]any{alice.UserID: map[string]any{alice.DeviceID: map[string]any{"n": 2}}})
		srv = srv.Restart(t)
		if got := toDevice(t, s.sync(t), bob.UserID); !slices.Equal(got, []float64{1, 2}) {
			t.Fatalf("after the restart got %v, want [1 2] (1 was never acknowledged)", got)
		}
		if got := toDevice(t, s.sync(t), bob.UserID); len(got) != 0 {
			t.Fatalf("after acknowledging: %v", got)
		}
	})
}

// TestDeliverToDevice covers the entry point of to-device messages from
// other servers: local recipients only, once per message ID.
func TestDeliverToDevice(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		const sender = "@carol:remote.example"
		msgs := map[string]map[string]json.RawMessage{
			alice.UserID:              {"*": json.RawMessage(`{"n":1}`)},
			"@dave:remote.example":    {"*": json.RawMessage(`{"n":2}`)},
			"@eve:" + "other.example": {"D": json.RawMessage(`{"n":3}`)},
		}
		for range 2 {
			if err := srv.E2EE.DeliverToDevice(t.Context(), sender, "m.test", "msg-1", msgs); err != nil {
				t.Fatal(err)
			}
		}
		if got := toDevice(t, (&syncer{c: alice}).sync(t), sender); !slices.Equal(got, []float64{1}) {
			t.Fatalf("alice got %v, want [1]", got)
		}
		if out, _ := srv.E2EE.PendingRemoteToDevice(t.Context(), "remote.example", 10); len(out) != 0 {
			t.Fatalf("messages from another server were queued for federation: %+v", out)
		}
		err := srv.E2EE.DeliverToDevice(t.Context(), sender, "m.test", "msg-2", map[string]map[string]json.RawMessage{alice.UserID: {"*": json.RawMessage(`"not an object"`)}})
		if err == nil {
			t.Fatal("a message that is not an object was accepted")
		}
	})
}
