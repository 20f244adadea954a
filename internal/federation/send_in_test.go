package federation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// message is the spec of a text message event.
func message(sender, body string) rooms.EventSpec {
	return rooms.EventSpec{Sender: sender, Type: "m.room.message", Content: map[string]any{"msgtype": "m.text", "body": body}}
}

// stored loads an event from s (nil if unknown).
func stored(t *testing.T, s *testutil.Server, eventID string) *rooms.Event {
	t.Helper()
	ev, err := s.Rooms.EventByID(context.Background(), eventID)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestForgedPDUs sends hs1 PDUs that must not change the room: a bad
// signature (dropped), a bad content hash (stored redacted), events that
// fail the auth rules (rejected), an event of an unknown room (ignored),
// and, once the room's ACL denies the sender, everything from it. Good
// PDUs in the same transaction are accepted all the same.
func TestForgedPDUs(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		_, srv := startServers(t, b, "hs1", "hs2")
		hs1, hs2 := srv[0], srv[1]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat"})
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		stateBefore := currentState(t, hs1, roomID)
		raw := func(p gomatrixserverlib.PDU) json.RawMessage { return p.JSON() }

		// One transaction: a good message, one with a bad signature, one
		// whose content was changed after signing, a power-levels change
		// bob may not make, a message of a user who is not in the room, and
		// a message of a room hs1 does not know.
		ver, pe := template(t, hs1, roomID, message(bob.UserID, "good"))
		good := signAs(t, hs2, ver, pe)
		_, pe = template(t, hs1, roomID, message(bob.UserID, "forged"))
		badSig := signWith(t, "hs2", &federation.SigningKey{ID: hs2.SigningKey.ID, Private: newKey(t)}, ver, pe)
		_, pe = template(t, hs1, roomID, message(bob.UserID, "original"))
		var tampered map[string]any
		if err := json.Unmarshal(signAs(t, hs2, ver, pe).JSON(), &tampered); err != nil {
			t.Fatal(err)
		}
		tampered["content"] = map[string]any{"msgtype": "m.text", "body": "changed after signing"}
		badHash, _ := json.Marshal(tampered)
		empty := ""
		_, pe = template(t, hs1, roomID, rooms.EventSpec{Sender: bob.UserID, Type: spec.MRoomPowerLevels, StateKey: &empty,
			Content: map[string]any{"users": map[string]int{bob.UserID: 100}}})
		powerGrab := signAs(t, hs2, ver, pe)
		_, pe = template(t, hs1, roomID, message("@mallory:hs2", "not a member"))
		outsider := signAs(t, hs2, ver, pe)
		otherRoom := newRoom(t, bob, map[string]any{"preset": "public_chat"})
		_, pe = template(t, hs2, otherRoom, message(bob.UserID, "unknown room"))
		unknownRoom := signAs(t, hs2, ver, pe)

		res, err := sendTxn(t, hs2, "hs1", "forged-1", []json.RawMessage{raw(good), raw(badSig), badHash, raw(powerGrab), raw(outsider), raw(unknownRoom)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := res[good.EventID()]; !ok || r["error"] != "" {
			t.Errorf("good event: %v (present %v)", r, ok)
		}
		for name, id := range map[string]string{"bad signature": badSig.EventID(), "power grab": powerGrab.EventID(), "outsider": outsider.EventID()} {
			if res[id]["error"] == "" {
				t.Errorf("%s: no error in %v", name, res[id])
			}
		}
		if _, ok := res[unknownRoom.EventID()]; ok {
			t.Errorf("the event of an unknown room has a result: %v", res)
		}
		if ev := stored(t, hs1, good.EventID()); ev == nil || ev.Status != rooms.StatusAccepted {
			t.Fatalf("good event not accepted: %+v", ev)
		}
		if ev := stored(t, hs1, badSig.EventID()); ev != nil {
			t.Errorf("event with a bad signature stored (status %d)", ev.Status)
		}
		if ev := stored(t, hs1, unknownRoom.EventID()); ev != nil {
			t.Errorf("event of an unknown room stored")
		}
		for name, id := range map[string]string{"power grab": powerGrab.EventID(), "outsider": outsider.EventID()} {
			if ev := stored(t, hs1, id); ev == nil || ev.Status != rooms.StatusRejected {
				t.Errorf("%s: not rejected: %+v", name, ev)
			}
		}
		// The tampered event is kept redacted: its ID is that of the
		// original (a hash of the redacted form), its content is gone.
		var red struct {
			Content map[string]any `json:"content"`
		}
		verImpl := gomatrixserverlib.MustGetRoomVersion(ver)
		parsed, err := verImpl.NewEventFromUntrustedJSON(badHash)
		if err != nil {
			t.Fatal(err)
		}
		ev := stored(t, hs1, parsed.EventID())
		if ev == nil || ev.Status != rooms.StatusAccepted {
			t.Fatalf("event with a bad hash: %+v", ev)
		}
		if err := json.Unmarshal(ev.JSON(), &red); err != nil || len(red.Content) != 0 {
			t.Fatalf("event with a bad hash is not redacted: %s", ev.JSON())
		}
		after := currentState(t, hs1, roomID)
		if fmt.Sprint(after) != fmt.Sprint(stateBefore) {
			t.Fatalf("state changed:\n%v\n%v", stateBefore, after)
		}

		// A retried transaction ID gets the first answer, whatever it carries.
		_, pe = template(t, hs1, roomID, message(bob.UserID, "in a reused transaction"))
		reused := signAs(t, hs2, ver, pe)
		again, err := sendTxn(t, hs2, "hs1", "forged-1", []json.RawMessage{raw(reused)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(again) != fmt.Sprint(res) || stored(t, hs1, reused.EventID()) != nil {
			t.Fatalf("reused transaction ID processed again: %v", again)
		}

		// Too many PDUs, and bodies of the wrong shape.
		many := make([]json.RawMessage, 51)
		for i := range many {
			many[i] = raw(good)
		}
		_, err = sendTxn(t, hs2, "hs1", "too-many", many, nil)
		wantRemote(t, err, 400, "M_BAD_JSON")
		for _, body := range []any{[]int{1, 2}, map[string]any{"pdus": "x"}, map[string]any{"pdus": []any{}, "edus": 5}} {
			err := hs2.Federation.Client.Do(ctx, "hs1", "PUT", "/_matrix/federation/v1/send/shape", body, nil)
			wantRemote(t, err, 400, "M_BAD_JSON")
		}

		// The ACL denies hs2: its PDUs get an error and change nothing,
		// its typing notifications are ignored.
		setState(t, alice, roomID, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"hs2"}})
		_, pe = template(t, hs1, roomID, message(bob.UserID, "denied"))
		denied := signAs(t, hs2, ver, pe)
		typing := map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": bob.UserID, "typing": true}}
		res, err = sendTxn(t, hs2, "hs1", "after-acl", []json.RawMessage{raw(denied)}, []map[string]any{typing})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(res[denied.EventID()]["error"], "ACL") || stored(t, hs1, denied.EventID()) != nil {
			t.Fatalf("PDU of a denied server: %v", res)
		}
		if users := typingUsers(t, alice, roomID); len(users) != 0 {
			t.Fatalf("typing of a denied server applied: %v", users)
		}
	})
}

// wantRemote checks that err is a remote error with the given status and
// errcode.
func wantRemote(t *testing.T, err error, status int, errcode string) {
	t.Helper()
	var re *federation.RemoteError
	if !errors.As(err, &re) || re.Status != status || re.ErrCode != errcode {
		t.Fatalf("got %v, want %d %s", err, status, errcode)
	}
}
