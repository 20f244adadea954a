package rooms_test

import (
	"context"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// TestServerACL sets m.room.server_acl through the client API and asks the
// engine, as federation will, which servers may take part.
func TestServerACL(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		rm := dirCreateRoom(t, alice, map[string]any{"preset": "public_chat"})
		ctx := context.Background()
		allowed := func(server string) bool {
			t.Helper()
			ok, err := srv.Rooms.ServerAllowed(ctx, rm.id, server)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if !allowed("anything.example") || !allowed("1.2.3.4") {
			t.Fatal("a room without an ACL must allow every server")
		}
		if _, err := srv.Rooms.ServerAllowed(ctx, "!unknown:"+srv.Config.ServerName, "x.example"); err == nil {
			t.Fatal("ServerAllowed of an unknown room must fail")
		}
		// The spec's example ACL.
		alice.MustDo(200, "PUT", rm.path+"/state/m.room.server_acl/", map[string]any{
			"allow_ip_literals": false, "allow": []string{"*"}, "deny": []string{"*.evil.com", "evil.com"},
		})
		for server, want := range map[string]bool{
			"good.example": true, "good.example:8448": true, "evil.com": false, "EVIL.com:1234": false,
			"sub.evil.com": false, "notevil.com": true, "1.2.3.4": false, "1.2.3.4:8448": false, "[::1]:8448": false,
		} {
			if got := allowed(server); got != want {
				t.Errorf("%s: allowed = %v, want %v", server, got, want)
			}
		}
		// A new ACL replaces the old one (and its memo).
		alice.MustDo(200, "PUT", rm.path+"/state/m.room.server_acl/", map[string]any{"allow": []string{"*.trusted.example", "trusted.example"}})
		for server, want := range map[string]bool{
			"trusted.example": true, "a.trusted.example": true, "good.example": false, "1.2.3.4": false,
		} {
			if got := allowed(server); got != want {
				t.Errorf("second ACL, %s: allowed = %v, want %v", server, got, want)
			}
		}
		// Redacting the ACL leaves an event without allow: no server is allowed.
		evID := alice.MustDo(200, "GET", rm.path+"/state/m.room.server_acl/?format=event", nil).JSON["event_id"].(string)
		alice.MustDo(200, "PUT", rm.path+"/redact/"+evID+"/r1", map[string]any{})
		if allowed("trusted.example") {
			t.Error("a redacted ACL must deny every server")
		}
	})
}
