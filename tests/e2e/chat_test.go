package e2e

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/palpo-go/palpo/internal/testutil"
)

// Predicates on events seen by a syncer.

// inRoom matches events of room with type typ.
func inRoom(room id.RoomID, typ event.Type, match func(*event.Event) bool) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.RoomID == room && e.Type.Type == typ.Type && match(e)
	}
}

// isEvent matches the event with ID evID.
func isEvent(evID id.EventID) func(*event.Event) bool {
	return func(e *event.Event) bool { return e.ID == evID }
}

// isMembership matches the member event of user with membership m.
func isMembership(user id.UserID, m event.Membership) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.StateKey != nil && *e.StateKey == user.String() && e.Content.AsMember().Membership == m
	}
}

// typing matches typing notifications that list user (typing) or do not
// (not typing).
func typing(user id.UserID, isTyping bool) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return slices.Contains(e.Content.AsTyping().UserIDs, user) == isTyping
	}
}

// receipt matches receipts of user, of type rt, on evID.
func receipt(user id.UserID, rt event.ReceiptType, evID id.EventID) func(*event.Event) bool {
	return func(e *event.Event) bool {
		_, ok := (*e.Content.AsReceipt())[evID][rt][user]
		return ok
	}
}

// sendText sends a text message with a transaction ID of the test's choice.
func sendText(t *testing.T, u *syncingUser, room id.RoomID, txnID, body string) id.EventID {
	t.Helper()
	content := &event.MessageEventContent{MsgType: event.MsgText, Body: body}
	resp := must(u.SendMessageEvent(reqCtx(t), room, event.EventMessage, content, mautrix.ReqSendEvent{TransactionID: txnID}))(t, "send "+body)
	return resp.EventID
}

// requireText waits until u sees evID in room as a text message from
// sender with body, and returns it.
func requireText(t *testing.T, u *syncingUser, room id.RoomID, evID id.EventID, sender id.UserID, body string) *event.Event {
	t.Helper()
	e, _ := u.waitFor(0, "message "+body, inRoom(room, event.EventMessage, isEvent(evID)))
	if c := e.Content.AsMessage(); e.Sender != sender || c.MsgType != event.MsgText || c.Body != body {
		t.Fatalf("%s saw message %s as sender %s, %s %q; want %s, m.text %q", u.UserID, evID, e.Sender, c.MsgType, c.Body, sender, body)
	}
	if e.Mautrix.EventSource&event.SourceTimeline == 0 {
		t.Fatalf("%s saw message %s outside a timeline (source %s)", u.UserID, evID, e.Mautrix.EventSource)
	}
	return e
}

// requireRedactedContent fails unless the JSON content of e is empty, as
// redaction leaves it for a message.
func requireRedactedContent(t *testing.T, what string, e *event.Event) {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(e.Content.VeryRaw, &c); err != nil || len(c) != 0 {
		t.Fatalf("%s: content %s, want {} after redaction", what, e.Content.VeryRaw)
	}
}

// TestChat is the chat scenario of issue 3: two users register, one creates
// a room and invites the other, who sees the invite through /sync, joins,
// and they chat both ways with typing notifications and read receipts; a
// redaction reaches both, the room's history paginates back to its
// creation, and a leave is seen by the one who stays.
func TestChat(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := startSyncing(t, srv.RegisterMautrix(t, "alice", "alice-password"))
		bob := startSyncing(t, srv.RegisterMautrix(t, "bob", "bob-password"))

		// Alice creates a private room; her syncer shows its creation.
		room := must(alice.CreateRoom(reqCtx(t), &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Tea room"}))(t, "create room").RoomID
		create, _ := alice.waitFor(0, "the room's create event", inRoom(room, event.StateCreate, func(*event.Event) bool { return true }))
		if create.Sender != alice.UserID {
			t.Fatalf("create event sent by %s, want %s", create.Sender, alice.UserID)
		}

		// The invite reaches Bob's syncer in rooms.invite, with the room's
		// name in the stripped state a client shows.
		must(alice.InviteUser(reqCtx(t), room, &mautrix.ReqInviteUser{UserID: bob.UserID}))(t, "invite")
		invite, _ := bob.waitFor(0, "the invite", inRoom(room, event.StateMember, isMembership(bob.UserID, event.MembershipInvite)))
		if invite.Sender != alice.UserID || invite.Mautrix.EventSource&event.SourceInvite == 0 {
			t.Fatalf("invite seen from %s in %s, want from %s in the invite section", invite.Sender, invite.Mautrix.EventSource, alice.UserID)
		}
		invited, _ := alice.waitFor(0, "Bob's invite", inRoom(room, event.StateMember, isMembership(bob.UserID, event.MembershipInvite)))
		name, _ := bob.waitFor(0, "the room name in the invite state", inRoom(room, event.StateRoomName, func(e *event.Event) bool {
			return e.Mautrix.EventSource&event.SourceInvite != 0
		}))
		if got := name.Content.AsRoomName().Name; got != "Tea room" {
			t.Fatalf("invite state room name %q, want %q", got, "Tea room")
		}

		// Bob joins; both see the join.
		must(bob.JoinRoomByID(reqCtx(t), room))(t, "join")
		join, _ := alice.waitFor(0, "Bob's join", inRoom(room, event.StateMember, isMembership(bob.UserID, event.MembershipJoin)))
		bob.waitFor(0, "his own join", inRoom(room, event.StateMember, isMembership(bob.UserID, event.MembershipJoin)))

		// They chat both ways. A retried send (same transaction ID) is the
		// same event, and the sender's own copy carries its transaction ID.
		hello := sendText(t, alice, room, "alice-1", "Hello Bob")
		if again := sendText(t, alice, room, "alice-1", "Hello Bob"); again != hello {
			t.Fatalf("resending transaction alice-1 gave event %s, want %s", again, hello)
		}
		requireText(t, bob, room, hello, alice.UserID, "Hello Bob")
		if own := requireText(t, alice, room, hello, alice.UserID, "Hello Bob"); own.Unsigned.TransactionID != "alice-1" {
			t.Fatalf("Alice's copy of her message has transaction_id %q, want alice-1", own.Unsigned.TransactionID)
		}
		if other := requireText(t, bob, room, hello, alice.UserID, "Hello Bob"); other.Unsigned.TransactionID != "" {
			t.Fatalf("Bob sees Alice's transaction_id %q", other.Unsigned.TransactionID)
		}
		hi := sendText(t, bob, room, "bob-1", "Hi Alice")
		requireText(t, alice, room, hi, bob.UserID, "Hi Alice")
		requireText(t, bob, room, hi, bob.UserID, "Hi Alice")

		// Typing notifications start and stop on Alice's side.
		must(bob.UserTyping(reqCtx(t), room, true, 30*time.Second))(t, "start typing")
		_, next := alice.waitFor(0, "Bob typing", inRoom(room, event.EphemeralEventTyping, typing(bob.UserID, true)))
		must(bob.UserTyping(reqCtx(t), room, false, 0))(t, "stop typing")
		alice.waitFor(next, "Bob no longer typing", inRoom(room, event.EphemeralEventTyping, typing(bob.UserID, false)))

		// A public read receipt reaches Alice; a private one reaches only
		// Bob. The private receipt is sent first, so had it leaked, Alice
		// would have seen it no later than the public one that follows.
		noErr(t, "read receipt", bob.MarkRead(reqCtx(t), room, hello))
		alice.waitFor(0, "Bob's read receipt", inRoom(room, event.EphemeralEventReceipt, receipt(bob.UserID, event.ReceiptTypeRead, hello)))
		more := sendText(t, alice, room, "alice-2", "Are you there?")
		requireText(t, bob, room, more, alice.UserID, "Are you there?")
		noErr(t, "private read receipt", bob.SendReceipt(reqCtx(t), room, more, event.ReceiptTypeReadPrivate, nil))
		bob.waitFor(0, "his own private receipt", inRoom(room, event.EphemeralEventReceipt, receipt(bob.UserID, event.ReceiptTypeReadPrivate, more)))
		noErr(t, "read receipt", bob.MarkRead(reqCtx(t), room, more))
		_, next = alice.waitFor(0, "Bob's second read receipt", inRoom(room, event.EphemeralEventReceipt, receipt(bob.UserID, event.ReceiptTypeRead, more)))
		if e := alice.sawBefore(next, inRoom(room, event.EphemeralEventReceipt, receipt(bob.UserID, event.ReceiptTypeReadPrivate, more))); e != nil {
			t.Fatalf("Alice saw Bob's private read receipt: %s", e.Content.VeryRaw)
		}

		// A redaction reaches both; the redacted message is served with
		// empty content and the redaction that removed it.
		oops := sendText(t, alice, room, "alice-3", "oops, wrong room")
		requireText(t, bob, room, oops, alice.UserID, "oops, wrong room")
		redaction := must(alice.RedactEvent(reqCtx(t), room, oops, mautrix.ReqRedact{Reason: "typo"}))(t, "redact").EventID
		for _, u := range []*syncingUser{alice, bob} {
			r, _ := u.waitFor(0, "the redaction", inRoom(room, event.EventRedaction, isEvent(redaction)))
			// Room version 11 and later carry redacts in the content; servers
			// should copy it to the top level for older clients.
			if c := r.Content.AsRedaction(); c.Redacts != oops || r.Redacts != oops || c.Reason != "typo" {
				t.Fatalf("%s saw redaction with content.redacts %s, redacts %s, reason %q; want %s and typo", u.UserID, c.Redacts, r.Redacts, c.Reason, oops)
			}
		}
		redacted := must(bob.GetEvent(reqCtx(t), room, oops))(t, "get redacted event")
		requireRedactedContent(t, "redacted event", redacted)
		if rb := redacted.Unsigned.RedactedBecause; rb == nil || rb.ID != redaction {
			t.Fatalf("redacted event's unsigned.redacted_because = %+v, want %s", rb, redaction)
		}

		// Bob leaves: Alice sees it in her timeline, Bob in rooms.leave.
		must(bob.LeaveRoom(reqCtx(t), room))(t, "leave")
		leave, _ := alice.waitFor(0, "Bob's leave", inRoom(room, event.StateMember, isMembership(bob.UserID, event.MembershipLeave)))
		if leave.Sender != bob.UserID {
			t.Fatalf("leave sent by %s, want %s", leave.Sender, bob.UserID)
		}
		bob.waitFor(0, "his own leave in rooms.leave", inRoom(room, event.StateMember, func(e *event.Event) bool {
			return isMembership(bob.UserID, event.MembershipLeave)(e) && e.Mautrix.EventSource&event.SourceLeave != 0
		}))

		// Alice pages back through the whole history with /messages.
		history := paginateBack(t, alice, room)
		if first := history[len(history)-1]; first.ID != create.ID {
			t.Fatalf("history ends with %s (%s), want the create event %s", first.ID, first.Type.Type, create.ID)
		}
		requireOrder(t, history, []id.EventID{leave.ID, redaction, oops, more, hi, hello, join.ID, invited.ID, create.ID})
		for _, e := range history {
			if e.ID == oops {
				requireRedactedContent(t, "redacted event in /messages", e)
			}
		}

		// Alice upgrades the room: her client sees the tombstone pointing at
		// a new room whose create event names the old one.
		var upgraded struct {
			ReplacementRoom id.RoomID `json:"replacement_room"`
		}
		must(alice.MakeRequest(reqCtx(t), "POST", alice.BuildClientURL("v3", "rooms", room, "upgrade"),
			map[string]any{"new_version": "12"}, &upgraded))(t, "upgrade")
		tomb, _ := alice.waitFor(0, "the tombstone", inRoom(room, event.StateTombstone, func(*event.Event) bool { return true }))
		if got := tomb.Content.AsTombstone().ReplacementRoom; got != upgraded.ReplacementRoom || got == "" {
			t.Fatalf("tombstone points at %q, upgrade answered %q", got, upgraded.ReplacementRoom)
		}
		newCreate, _ := alice.waitFor(0, "the new room's create event", inRoom(upgraded.ReplacementRoom, event.StateCreate, func(*event.Event) bool { return true }))
		if pred := newCreate.Content.AsCreate().Predecessor; pred == nil || pred.RoomID != room {
			t.Fatalf("new room's predecessor = %+v, want %s", pred, room)
		}
	})
}

// paginateBack reads room's history newest first through GET /messages in
// small pages, from the end of the room (no from token), until the server
// says there is nothing more.
func paginateBack(t *testing.T, u *syncingUser, room id.RoomID) []*event.Event {
	t.Helper()
	var out []*event.Event
	seen := map[id.EventID]bool{}
	from := ""
	for page := 0; ; page++ {
		if page > 100 {
			t.Fatalf("/messages: still paginating after %d pages (%d events)", page, len(out))
		}
		resp := must(u.Messages(reqCtx(t), room, from, "", mautrix.DirectionBackward, nil, 3))(t, "messages")
		if resp.Start == "" {
			t.Fatalf("/messages page %d has no start token", page)
		}
		for _, e := range resp.Chunk {
			if seen[e.ID] {
				t.Fatalf("/messages returned %s twice", e.ID)
			}
			seen[e.ID] = true
			out = append(out, e)
		}
		if resp.End == "" {
			break
		}
		from = resp.End
	}
	if len(out) == 0 {
		t.Fatal("/messages returned no events")
	}
	return out
}

// requireOrder fails unless every event of want appears in history, in the
// order of want.
func requireOrder(t *testing.T, history []*event.Event, want []id.EventID) {
	t.Helper()
	var got []id.EventID
	for _, e := range history {
		if slices.Contains(want, e.ID) {
			got = append(got, e.ID)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("history holds %v in this order, want %v", got, want)
	}
}
