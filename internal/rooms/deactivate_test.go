package rooms_test

import (
	"net/url"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// TestDeactivationLeavesRooms deactivates an account over HTTP and checks
// that it left its joined room, rejected its invite and withdrew its knock.
func TestDeactivationLeavesRooms(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		owner := srv.NewUser(t, "owner", "pw")
		alice := srv.NewUser(t, "alice", "secret")
		joined := dirCreateRoom(t, owner, map[string]any{"preset": "public_chat"})
		alice.MustDo(200, "POST", joined.path+"/join", map[string]any{})
		invited := dirCreateRoom(t, owner, map[string]any{"preset": "private_chat", "invite": []string{alice.UserID}})
		knocked := dirCreateRoom(t, owner, map[string]any{"preset": "private_chat",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}})
		alice.MustDo(200, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(knocked.id), map[string]any{})
		for rm, want := range map[*dirRoom]string{joined: "join", invited: "invite", knocked: "knock"} {
			if m := dirState(t, owner, rm, "m.room.member", alice.UserID)["membership"]; m != want {
				t.Fatalf("before deactivation: %v, want %s", m, want)
			}
		}

		const path = "/_matrix/client/v3/account/deactivate"
		r := alice.Do("POST", path, map[string]any{})
		session, _ := r.JSON["session"].(string)
		if r.Status != 401 || session == "" {
			t.Fatalf("UIA challenge: %d %s", r.Status, r.Body)
		}
		alice.MustDo(200, "POST", path, map[string]any{"auth": map[string]any{
			"type": "m.login.password", "session": session, "password": "secret",
			"identifier": map[string]any{"type": "m.id.user", "user": alice.UserID},
		}})
		for _, rm := range []*dirRoom{joined, invited, knocked} {
			m := dirState(t, owner, rm, "m.room.member", alice.UserID)
			if m["membership"] != "leave" {
				t.Fatalf("after deactivation: %v", m)
			}
		}
		if r := owner.MustDo(200, "GET", joined.path+"/joined_members", nil); len(r.JSON["joined"].(map[string]any)) != 1 {
			t.Fatalf("joined members after deactivation: %s", r.Body)
		}
	})
}
