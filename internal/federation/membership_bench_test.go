package federation_test

import (
	"fmt"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// BenchmarkRemoteJoin measures a join through another server of a room
// with 300 members (about 310 state events): make_join, send_join, the
// checks of the answer (signatures, hashes, auth) and the import. Each
// iteration leaves first, so that the join goes through the resident
// server again.
func BenchmarkRemoteJoin(b *testing.B) {
	n := newMemberNet(b, testutil.SQLite, "hs1", "hs2")
	alice, bob := n.user("hs1", "alice"), n.user("hs2", "bob")
	res := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
	roomID := res.JSON["room_id"].(string)
	for i := range 300 {
		u := n.user("hs1", fmt.Sprintf("member%d", i))
		u.MustDo(200, "POST", roomPath(roomID)+"/join", map[string]any{})
	}
	b.ResetTimer()
	for b.Loop() {
		if res := joinVia(bob, roomID, "hs1"); res.Status != 200 {
			b.Fatalf("join: %d %s", res.Status, res.Body)
		}
		b.StopTimer()
		bob.MustDo(200, "POST", roomPath(roomID)+"/leave", map[string]any{})
		b.StartTimer()
	}
}
