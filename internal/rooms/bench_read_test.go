package rooms_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// BenchmarkMessagesPagination pages a room of 1000 messages through a real
// server over HTTP, on each backend:
//
//   - walk: one op is a whole backwards pagination of the room, 100 events
//     a request (11 requests), token to token;
//   - page: one op is one request for the newest 50 events.
func BenchmarkMessagesPagination(b *testing.B) {
	for _, be := range testutil.Backends() {
		b.Run(string(be), func(b *testing.B) {
			srv := testutil.Start(b, be)
			alice := srv.NewUser(b, "alice", "pw")
			rm := newReadRoom(b, alice, map[string]any{"preset": "private_chat"})
			const total, batch = 1000, 100
			for i := 0; i < total; i += batch {
				specs := make([]rooms.EventSpec, batch)
				for j := range specs {
					specs[j] = rooms.EventSpec{Sender: alice.UserID, Type: "m.room.message",
						Content: map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", i+j)}}
				}
				if _, err := srv.Rooms.Send(context.Background(), rm.id, specs...); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("walk", func(b *testing.B) {
				requests := 0
				for b.Loop() {
					evs, pages := rm.paginate(alice, "b", 100, "")
					if len(evs) < total {
						b.Fatalf("walk returned %d events", len(evs))
					}
					requests += len(pages)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(requests), "ns/request")
			})
			b.Run("page", func(b *testing.B) {
				for b.Loop() {
					if p := rm.messages(alice, "dir=b&limit=50"); len(p.Chunk) != 50 {
						b.Fatalf("page of %d events", len(p.Chunk))
					}
				}
			})
		})
	}
}
