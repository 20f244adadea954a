package push_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

// BenchmarkEvaluator100 measures the durable evaluator end to end in a
// 100-member room: events are stored while it is stopped, then the timer
// runs from its start until it has evaluated them all for the 99 other
// members and committed the notifications and counters.
func BenchmarkEvaluator100(b *testing.B) {
	for _, backend := range testutil.Backends() {
		b.Run(string(backend), func(b *testing.B) { benchEvaluator(b, backend) })
	}
}

func benchEvaluator(b *testing.B, backend testutil.Backend) {
	srv := testutil.Start(b, backend)
	users := make([]*testutil.Client, 100)
	for i := range users {
		users[i] = srv.NewUser(b, fmt.Sprintf("user%d", i), "pw")
	}
	roomID := createRoom(b, users[0], map[string]any{"preset": "public_chat"})
	for _, u := range users[1:] {
		join(b, u, roomID)
	}
	srv.Push.Stop()
	for i := 0; i < b.N; i++ {
		say(b, users[0], roomID, fmt.Sprintf("message %d", i))
	}
	ctx := context.Background()
	pos, err := srv.DB.CurrentStreamPos(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	if err := srv.Push.Start(); err != nil {
		b.Fatal(err)
	}
	for {
		counts, err := srv.Push.UnreadCounts(ctx, users[99].UserID, pos)
		if err != nil {
			b.Fatal(err)
		}
		if counts[roomID]["main"].NotificationCount >= int64(b.N) {
			break
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(b.N*99)/elapsed.Seconds(), "notifications/s")
}
