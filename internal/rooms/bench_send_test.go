package rooms_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// benchClients is the number of concurrent clients of the send benchmarks.
const benchClients = 16

// sender sends messages over HTTP with a connection pool sized for the
// benchmark's concurrency.
type sender struct {
	hc    *http.Client
	base  string
	token string
	room  string
	txn   atomic.Int64
}

func (s *sender) send(b *testing.B) {
	txn := s.txn.Add(1)
	req, err := http.NewRequest("PUT", s.base+"/_matrix/client/v3/rooms/"+url.PathEscape(s.room)+"/send/m.room.message/b"+strconv.FormatInt(txn, 10),
		bytes.NewReader([]byte(`{"msgtype":"m.text","body":"benchmark message"}`)))
	if err != nil {
		b.Error(err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		b.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Errorf("send: status %d", resp.StatusCode)
	}
}

// benchSend measures messages sent by benchClients parallel clients, into
// one shared room or one room each.
func benchSend(b *testing.B, shared bool) {
	for _, backend := range testutil.Backends() {
		b.Run(string(backend), func(b *testing.B) {
			srv := testutil.Start(b, backend)
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients * 2}}
			ctx := context.Background()
			senders := make([]*sender, benchClients)
			var room string
			for i := range senders {
				c := srv.NewUser(b, fmt.Sprintf("user%d", i), "pw")
				switch {
				case !shared || i == 0:
					id, err := srv.Rooms.CreateRoom(ctx, c.UserID, &rooms.CreateRoomRequest{Preset: "public_chat"})
					if err != nil {
						b.Fatal(err)
					}
					room = id
				default:
					if _, err := srv.Rooms.SetMembership(ctx, room, c.UserID, c.UserID, spec.Join, "", nil); err != nil {
						b.Fatal(err)
					}
				}
				senders[i] = &sender{hc: hc, base: srv.URL, token: c.AccessToken, room: room}
			}
			var next atomic.Int64
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((benchClients + procs - 1) / procs)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				s := senders[int(next.Add(1)-1)%benchClients]
				for pb.Next() {
					s.send(b)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkSendOneRoom measures events/s of 16 clients sending messages
// into one room through a real server over HTTP: the room's writer lock
// serialises them, so this is the per-room write path.
func BenchmarkSendOneRoom(b *testing.B) { benchSend(b, true) }

// BenchmarkSendManyRooms measures events/s of 16 clients each sending into
// their own room: rooms proceed in parallel, so this is the database's
// commit rate.
func BenchmarkSendManyRooms(b *testing.B) { benchSend(b, false) }

// BenchmarkStateResolutionFork measures the resolution of a large fork: a
// room of 500 members where server A changes the power levels and 100
// members change their display names while server B bans 50 members and
// renames the room. The setup also checks that both servers converge.
func BenchmarkStateResolutionFork(b *testing.B) {
	for _, backend := range testutil.Backends() {
		b.Run(string(backend), func(b *testing.B) {
			ctx := context.Background()
			hsA, hsB := startHomeserver(b, backend), startHomeserver(b, backend)
			alice, bob := hsA.user("alice"), hsB.user("bob")
			roomID := hsA.createRoom(alice, 12, "public_chat", nil)
			const members = 500
			users := make([]string, members)
			joins := make([]rooms.EventSpec, members)
			for i := range users {
				users[i] = fmt.Sprintf("@m%d:%s", i, hsA.name)
				joins[i] = member(users[i], users[i], spec.Join)
			}
			hsA.send(roomID, joins...)
			join(b, hsA, hsB, roomID, bob)
			r := &fedRoom{t: b, a: hsA, b: hsB, id: roomID}
			hsB.deliver(hsA, roomID, hsA.send(roomID, state(alice, spec.MRoomPowerLevels, "", r.powerLevels(hsA, map[string]int64{bob: 100})))...)

			// Branch A: power levels, then 100 display names.
			var branchA []*rooms.Event
			branchA = append(branchA, hsA.send(roomID, state(alice, spec.MRoomPowerLevels, "", r.powerLevels(hsA, map[string]int64{users[0]: 50})))...)
			specs := make([]rooms.EventSpec, 100)
			for i := range specs {
				u := users[100+i]
				specs[i] = state(u, spec.MRoomMember, u, map[string]any{"membership": spec.Join, "displayname": "renamed"})
			}
			branchA = append(branchA, hsA.send(roomID, specs...)...)
			// Branch B: 50 bans and a new name.
			specs = make([]rooms.EventSpec, 50)
			for i := range specs {
				specs[i] = member(bob, users[300+i], spec.Ban)
			}
			branchB := hsB.send(roomID, specs...)
			branchB = append(branchB, hsB.send(roomID, state(bob, spec.MRoomName, "", map[string]string{"name": "forked"}))...)
			mustStatus(b, hsA.deliver(hsB, roomID, branchB...), rooms.StatusAccepted)
			mustStatus(b, hsB.deliver(hsA, roomID, branchA...), rooms.StatusAccepted)
			sameState(b, roomID, hsA, hsB)

			tips := []string{branchA[len(branchA)-1].EventID(), branchB[len(branchB)-1].EventID()}
			b.ResetTimer()
			for b.Loop() {
				if _, err := hsA.e.StateAfterEvents(ctx, roomID, tips); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(members), "members")
		})
	}
}

// BenchmarkIngestTransaction measures events/s of the federation ingest
// path: messages of a remote user arrive in transactions of 50 PDUs (as
// /send delivers them) and each batch is checked and stored by
// IngestEvents. Building the events on the remote server is not timed.
func BenchmarkIngestTransaction(b *testing.B) {
	for _, backend := range testutil.Backends() {
		b.Run(string(backend), func(b *testing.B) {
			hsA, hsB := startHomeserver(b, backend), startHomeserver(b, backend)
			alice, bob := hsA.user("alice"), hsB.user("bob")
			roomID := hsA.createRoom(alice, 12, "public_chat", nil)
			join(b, hsA, hsB, roomID, bob)
			ver := hsA.version(roomID)
			var elapsed time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				b.StopTimer()
				specs := make([]rooms.EventSpec, min(50, b.N-done))
				for i := range specs {
					specs[i] = message(bob, "benchmark message")
				}
				pdus := wire(b, ver, hsB.send(roomID, specs...)...)
				b.StartTimer()
				start := time.Now()
				res := hsA.ingest(roomID, pdus)
				elapsed += time.Since(start)
				mustStatus(b, res, rooms.StatusAccepted)
				done += len(specs)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}
