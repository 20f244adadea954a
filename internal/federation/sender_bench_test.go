package federation_test

import (
	"fmt"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// BenchmarkMessagesAcross measures messages from a user of hs1 reaching a
// room's member on hs2: each iteration sends 100 messages through the
// client API and waits until the last one can be read on hs2 (the stream
// reader, the queue, transactions of up to 50 PDUs, /send and the ingest
// path in between). msgs/s is the end-to-end rate.
func BenchmarkMessagesAcross(b *testing.B) {
	_, srv := startServers(b, testutil.SQLite, "hs1", "hs2")
	hs1, hs2 := srv[0], srv[1]
	alice, bob := hs1.NewUser(b, "alice", "pw"), hs2.NewUser(b, "bob", "pw")
	roomID := newRoom(b, alice, map[string]any{"preset": "public_chat"})
	joinOver(b, hs1, hs2, roomID, bob.UserID)
	waitEvent(b, bob, roomID, say(b, alice, roomID, "warm up"))
	const batch = 100
	n := 0
	for b.Loop() {
		var last string
		for i := range batch {
			last = say(b, alice, roomID, fmt.Sprintf("message %d", i))
		}
		waitEvent(b, bob, roomID, last)
		n += batch
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}
