package e2ee_test

import (
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// deviceLists returns the changed and left lists of a sync response.
func deviceLists(resp map[string]any) (changed, left []string) {
	return stringList(dig(resp, "device_lists", "changed")), stringList(dig(resp, "device_lists", "left"))
}

func TestDeviceLists(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := newDevice(t, srv.NewUser(t, "alice", "pw"))
		bob := newDevice(t, srv.NewUser(t, "bob", "pw"))
		carol := newDevice(t, srv.NewUser(t, "carol", "pw"))
		roomID := createRoom(t, alice.Client, map[string]any{"preset": "public_chat"})
		join(t, bob.Client, roomID)
		as, bs, cs := &syncer{c: alice.Client}, &syncer{c: bob.Client}, &syncer{c: carol.Client}
		if resp := as.sync(t); resp["device_lists"] != nil {
			t.Fatalf("an initial sync has no device_lists: %v", resp["device_lists"])
		}
		bs.sync(t)
		cs.sync(t)
		before := as.since

		// New device keys: the user's peers and the user see the change;
		// users sharing no room do not.
		bob.upload(t, map[string]any{"device_keys": bob.deviceKeys(t)})
		carol.upload(t, map[string]any{"device_keys": carol.deviceKeys(t)})
		if changed, left := deviceLists(as.sync(t)); !slices.Equal(changed, []string{bob.UserID}) || len(left) != 0 {
			t.Fatalf("alice: changed %v left %v, want bob changed", changed, left)
		}
		if changed, _ := deviceLists(bs.sync(t)); !slices.Equal(changed, []string{bob.UserID}) {
			t.Fatalf("bob: changed %v, want himself", changed)
		}
		if changed, _ := deviceLists(as.sync(t)); len(changed) != 0 {
			t.Fatalf("the change was reported twice: %v", changed)
		}
		afterUpload := as.since

		// Starting to share a room: both sides see each other.
		join(t, carol.Client, roomID)
		if changed, _ := deviceLists(as.sync(t)); !slices.Equal(changed, []string{carol.UserID}) {
			t.Fatalf("alice after carol joined: changed %v", changed)
		}
		if changed, _ := deviceLists(cs.sync(t)); !slices.Contains(changed, alice.UserID) || !slices.Contains(changed, bob.UserID) {
			t.Fatalf("carol after joining: changed %v, want alice and bob", changed)
		}
		// Stopping to share every room: left, on both sides.
		leave(t, carol.Client, roomID)
		if changed, left := deviceLists(as.sync(t)); len(changed) != 0 || !slices.Equal(left, []string{carol.UserID}) {
			t.Fatalf("alice after carol left: changed %v left %v", changed, left)
		}
		if _, left := deviceLists(cs.sync(t)); !slices.Equal(left, []string{alice.UserID, bob.UserID}) {
			t.Fatalf("carol after leaving: left %v, want alice and bob", left)
		}
		// A profile change is not a join.
		bob.MustDo(200, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(bob.UserID)+"/displayname", map[string]any{"displayname": "Bobby"})
		if changed, left := deviceLists(as.sync(t)); len(changed) != 0 || len(left) != 0 {
			t.Fatalf("after a profile change: changed %v left %v", changed, left)
		}

		// Deleting a device is a change, and wakes a waiting /sync.
		done := make(chan map[string]any)
		go func() {
			done <- alice.Do("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(as.since), nil).JSON
		}()
		eventually(t, "alice's /sync waits", func() bool { return srv.Sync.Notifier().Waiting() > 0 })
		if err := srv.Accounts.DeleteDevices(t.Context(), bob.UserID, []string{bob.DeviceID}, ""); err != nil {
			t.Fatal(err)
		}
		if changed, _ := deviceLists(<-done); !slices.Equal(changed, []string{bob.UserID}) {
			t.Fatalf("alice after bob deleted a device: changed %v", changed)
		}

		// /keys/changes between two tokens.
		const path = "/_matrix/client/v3/keys/changes"
		r := alice.MustDo(200, "GET", path+"?from="+url.QueryEscape(before)+"&to="+url.QueryEscape(afterUpload), nil)
		if got := stringList(r.JSON["changed"]); !slices.Equal(got, []string{bob.UserID}) {
			t.Fatalf("/keys/changes: %s", r.Body)
		}
		if _, ok := r.JSON["left"].([]any); !ok {
			t.Fatalf("/keys/changes without left: %s", r.Body)
		}
		wantError(t, "no from", alice.Do("GET", path+"?to="+url.QueryEscape(before), nil), 400, "M_MISSING_PARAM")
		wantError(t, "no to", alice.Do("GET", path+"?from="+url.QueryEscape(before), nil), 400, "M_MISSING_PARAM")
		wantError(t, "bad token", alice.Do("GET", path+"?from=banana&to="+url.QueryEscape(before), nil), 400, "M_INVALID_PARAM")
	})
}

// TestDeviceListsManyUsers covers the many-users path: past a few dozen
// candidates, sharing a room is decided from the members of the syncing
// user's rooms, loaded once.
func TestDeviceListsManyUsers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		roomID := createRoom(t, alice, map[string]any{"preset": "public_chat"})
		as := &syncer{c: alice}
		as.sync(t)
		var want []string
		for i := range 40 {
			u := newDevice(t, srv.NewUser(t, fmt.Sprintf("user%02d", i), "pw"))
			if i%4 != 0 { // a quarter of them never share a room with alice
				join(t, u.Client, roomID)
				want = append(want, u.UserID)
			}
			u.upload(t, map[string]any{"device_keys": u.deviceKeys(t)})
		}
		slices.Sort(want)
		if changed, left := deviceLists(as.sync(t)); !slices.Equal(changed, want) || len(left) != 0 {
			t.Fatalf("changed %v left %v, want changed %v", changed, left, want)
		}
	})
}
