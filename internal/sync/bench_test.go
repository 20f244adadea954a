package sync_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	gosync "sync"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

// BenchmarkSendToSyncLatency measures how long a message takes from the
// start of its send request until each of 20 long-polling listeners in the
// room has it. It reports p50 and p99 in milliseconds.
func BenchmarkSendToSyncLatency(b *testing.B) {
	srv := testutil.Start(b, testutil.SQLite)
	sender := srv.NewUser(b, "sender", "pw")
	roomID := createRoom(b, sender, map[string]any{"preset": "public_chat"})
	const listeners = 20
	type arrival struct {
		body string
		at   time.Time
	}
	arrivals := make(chan arrival, 1024)
	stop := make(chan struct{})
	var wg gosync.WaitGroup
	for i := 0; i < listeners; i++ {
		c := srv.NewUser(b, fmt.Sprint("listener", i), "pw")
		c.MustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		since := (&syncer{c: c}).sync(b, "")["next_batch"].(string)
		wg.Add(1)
		go func(c *testutil.Client, since string) {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", c.BaseURL+"/_matrix/client/v3/sync?timeout=1000&since="+url.QueryEscape(since), nil)
				req.Header.Set("Authorization", "Bearer "+c.AccessToken)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				var body map[string]any
				_ = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				now := time.Now()
				if nb, ok := body["next_batch"].(string); ok {
					since = nb
				}
				for _, m := range timelineBodies(body, roomID) {
					arrivals <- arrival{m, now}
				}
			}
		}(c, since)
	}
	time.Sleep(200 * time.Millisecond) // let every listener start its long-poll
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := fmt.Sprint("msg", i)
		start := time.Now()
		send(b, sender, roomID, body)
		got := 0
		deadline := time.After(10 * time.Second)
		for got < listeners {
			select {
			case a := <-arrivals:
				if a.body == body {
					lat = append(lat, a.at.Sub(start))
					got++
				}
			case <-deadline:
				b.Fatalf("message %d reached %d of %d listeners", i, got, listeners)
			}
		}
		time.Sleep(20 * time.Millisecond) // space messages apart
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkInitialSync200Rooms measures a full initial sync of a user in 200
// rooms with 10 messages each.
func BenchmarkInitialSync200Rooms(b *testing.B) {
	srv := testutil.Start(b, testutil.SQLite)
	u := srv.NewUser(b, "busy", "pw")
	for r := 0; r < 200; r++ {
		roomID := createRoom(b, u, map[string]any{"preset": "private_chat", "name": fmt.Sprint("room ", r)})
		for m := 0; m < 10; m++ {
			send(b, u, roomID, fmt.Sprint("message ", m))
		}
	}
	b.ResetTimer()
	var size int
	for i := 0; i < b.N; i++ {
		r := u.MustDo(200, "GET", "/_matrix/client/v3/sync?timeout=0", nil)
		if n := len(r.JSON["rooms"].(map[string]any)["join"].(map[string]any)); n != 200 {
			b.Fatalf("initial sync has %d rooms", n)
		}
		size = len(r.Body)
	}
	b.ReportMetric(float64(size), "bytes/sync")
}
