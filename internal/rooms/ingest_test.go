package rooms_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// homeserver is one server of a federation test: its name and signing key,
// and its room engine when it runs one (a server that only signs events
// needs none).
type homeserver struct {
	t    testing.TB
	name string
	key  *federation.SigningKey
	e    *rooms.Engine
	srv  *testutil.Server
}

// startHomeserver starts a real server on backend b.
func startHomeserver(t testing.TB, b testutil.Backend) *homeserver {
	t.Helper()
	srv := testutil.Start(t, b)
	return &homeserver{t: t, name: srv.Config.ServerName, key: srv.SigningKey, e: srv.Rooms, srv: srv}
}

// signingOnly is a server that only signs events (no engine).
func signingOnly(t testing.TB, name string) *homeserver {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &homeserver{t: t, name: name, key: &federation.SigningKey{ID: "ed25519:test", Private: priv}}
}

// with returns h for use in test t (a subtest).
func (h *homeserver) with(t testing.TB) *homeserver {
	c := *h
	c.t = t
	return &c
}

// user creates a local account (so that profile lookups work) and returns
// its user ID.
func (h *homeserver) user(localpart string) string {
	h.t.Helper()
	if h.srv == nil {
		return "@" + localpart + ":" + h.name
	}
	return h.srv.NewUser(h.t, localpart, "pw").UserID
}

// createRoom creates a room as creator with the given version and preset,
// applying extra creation options.
func (h *homeserver) createRoom(creator string, version int, preset string, extra func(*rooms.CreateRoomRequest)) string {
	h.t.Helper()
	req := &rooms.CreateRoomRequest{RoomVersion: fmt.Sprint(version), Preset: preset}
	if extra != nil {
		extra(req)
	}
	roomID, err := h.e.CreateRoom(context.Background(), creator, req)
	if err != nil {
		h.t.Fatalf("create room v%d: %v", version, err)
	}
	return roomID
}

// send sends local events and fails the test on error.
func (h *homeserver) send(roomID string, specs ...rooms.EventSpec) []*rooms.Event {
	h.t.Helper()
	evs, err := h.e.Send(context.Background(), roomID, specs...)
	if err != nil {
		h.t.Fatalf("%s: send %s: %v", h.name, specs[0].Type, err)
	}
	return evs
}

// state builds a state event spec.
func state(sender, typ, stateKey string, content any) rooms.EventSpec {
	return rooms.EventSpec{Sender: sender, Type: typ, StateKey: &stateKey, Content: content}
}

// message builds a message event spec.
func message(sender, body string) rooms.EventSpec {
	return rooms.EventSpec{Sender: sender, Type: "m.room.message", Content: map[string]any{"msgtype": "m.text", "body": body}}
}

// member builds a membership event spec.
func member(sender, target, membership string) rooms.EventSpec {
	return state(sender, spec.MRoomMember, target, map[string]any{"membership": membership})
}

// version returns a room's version on this server.
func (h *homeserver) version(roomID string) gomatrixserverlib.RoomVersion {
	h.t.Helper()
	v, err := h.e.RoomVersion(context.Background(), roomID)
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// wire turns stored events into PDUs as another server receives them.
func wire(t testing.TB, ver gomatrixserverlib.RoomVersion, evs ...*rooms.Event) []gomatrixserverlib.PDU {
	t.Helper()
	out := make([]gomatrixserverlib.PDU, len(evs))
	for i, ev := range evs {
		p, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventFromTrustedJSON(ev.JSON(), ev.Redacted())
		if err != nil {
			t.Fatal(err)
		}
		out[i] = p
	}
	return out
}

// ingest gives PDUs to the server's engine.
func (h *homeserver) ingest(roomID string, pdus []gomatrixserverlib.PDU, opts ...rooms.IngestOption) []rooms.IngestResult {
	h.t.Helper()
	res, err := h.e.IngestEvents(context.Background(), roomID, pdus, opts...)
	if err != nil {
		h.t.Fatalf("%s: ingest: %v", h.name, err)
	}
	return res
}

// deliver sends events of from to h, as federation would, and returns the
// results.
func (h *homeserver) deliver(from *homeserver, roomID string, evs ...*rooms.Event) []rooms.IngestResult {
	h.t.Helper()
	return h.ingest(roomID, wire(h.t, from.version(roomID), evs...))
}

// mustStatus checks that every result has the status want.
func mustStatus(t testing.TB, res []rooms.IngestResult, want int) {
	t.Helper()
	for _, r := range res {
		if !r.Stored || r.Status != want {
			t.Fatalf("event %s: stored=%v status %d, want %d (err %v, missing auth %v prevs %v)",
				r.EventID, r.Stored, r.Status, want, r.Err, r.MissingAuth, r.MissingPrevs)
		}
	}
}

// sign builds and signs an event skeleton as server h.
func (h *homeserver) sign(ver gomatrixserverlib.RoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	h.t.Helper()
	pdu, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventBuilderFromProtoEvent(pe).
		Build(time.Now(), spec.ServerName(h.name), gomatrixserverlib.KeyID(h.key.ID), h.key.Private)
	if err != nil {
		h.t.Fatalf("build event: %v", err)
	}
	return pdu
}

// forge builds an event of a user of h from resident's view of the room,
// with no auth check, optionally changing the skeleton first.
func (h *homeserver) forge(resident *homeserver, roomID string, s rooms.EventSpec, change func(*gomatrixserverlib.ProtoEvent)) gomatrixserverlib.PDU {
	h.t.Helper()
	pe, err := resident.e.EventTemplate(context.Background(), roomID, s)
	if err != nil {
		h.t.Fatalf("template: %v", err)
	}
	if change != nil {
		change(pe)
	}
	return h.sign(resident.version(roomID), pe)
}

// join makes user (of joiner) join a room of resident the federation way:
// a template from the resident (make_join), signed by the joiner, accepted
// by the resident (send_join), and — when the joiner runs an engine — the
// room imported there from the state before the join and its auth chain.
func join(t testing.TB, resident, joiner *homeserver, roomID, user string) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	ver := resident.version(roomID)
	pdu := joiner.forge(resident, roomID, member(user, user, spec.Join), nil)
	mustStatus(t, resident.ingest(roomID, []gomatrixserverlib.PDU{pdu}), rooms.StatusAccepted)
	if joiner.e == nil {
		return pdu
	}
	ev, err := resident.e.EventByID(ctx, pdu.EventID())
	if err != nil || ev == nil {
		t.Fatalf("join event not stored: %v", err)
	}
	before, err := resident.e.StateAt(ctx, ev, false)
	if err != nil {
		t.Fatal(err)
	}
	stateEvs, err := resident.e.StateEvents(ctx, ver, before)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{pdu.EventID()}
	for _, s := range stateEvs {
		ids = append(ids, s.EventID())
	}
	chain, err := resident.e.AuthChain(ctx, roomID, ids)
	if err != nil {
		t.Fatal(err)
	}
	joinEv, err := joiner.e.ImportRoomState(ctx, ver, wire(t, ver, stateEvs...), wire(t, ver, chain...), wire(t, ver, ev)[0])
	if err != nil {
		t.Fatalf("import room state: %v", err)
	}
	if joinEv.Status != rooms.StatusAccepted || joinEv.Pos == 0 {
		t.Fatalf("imported join: status %d pos %d", joinEv.Status, joinEv.Pos)
	}
	return pdu
}

// currentState returns a room's current state as (type, state_key) →
// event ID, comparable across servers.
func (h *homeserver) currentState(roomID string) map[rooms.StateKey]string {
	h.t.Helper()
	m, err := h.e.CurrentState(context.Background(), roomID)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.byEventID(roomID, m)
}

// byEventID maps a state map's NIDs to event IDs.
func (h *homeserver) byEventID(roomID string, m rooms.StateMap) map[rooms.StateKey]string {
	h.t.Helper()
	evs, err := h.e.StateEvents(context.Background(), h.version(roomID), m)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[rooms.StateKey]string{}
	for _, ev := range evs {
		out[ev.Key()] = ev.EventID()
	}
	if len(out) != len(m) {
		h.t.Fatalf("state has %d entries but %d events load", len(m), len(out))
	}
	return out
}

// stateContent returns the content of the current state event at key on h.
func (h *homeserver) stateContent(roomID, typ, stateKey string) map[string]any {
	h.t.Helper()
	ev, err := h.e.CurrentStateEvent(context.Background(), roomID, typ, stateKey)
	if err != nil {
		h.t.Fatal(err)
	}
	if ev == nil {
		return nil
	}
	var c map[string]any
	if err := json.Unmarshal(ev.Content(), &c); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// stored loads an event from h's engine.
func (h *homeserver) stored(eventID string) *rooms.Event {
	h.t.Helper()
	ev, err := h.e.EventByID(context.Background(), eventID)
	if err != nil {
		h.t.Fatal(err)
	}
	if ev == nil {
		h.t.Fatalf("%s: event %s not stored", h.name, eventID)
	}
	return ev
}

// sameState fails unless two servers have the same current state.
func sameState(t testing.TB, roomID string, a, b *homeserver) map[rooms.StateKey]string {
	t.Helper()
	sa, sb := a.currentState(roomID), b.currentState(roomID)
	for k, id := range sa {
		if sb[k] != id {
			t.Errorf("state at %v: %s has %s, %s has %s", k, a.name, id, b.name, sb[k])
		}
	}
	for k, id := range sb {
		if _, ok := sa[k]; !ok {
			t.Errorf("state at %v: only %s has %s", k, b.name, id)
		}
	}
	return sa
}

// TestIngestJoinAndChatEveryVersion joins a room of another server in every
// room version, then exchanges messages and state both ways: every event is
// accepted, takes a stream position and both servers agree on the state.
func TestIngestJoinAndChatEveryVersion(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		hsA, hsB := startHomeserver(t, b), startHomeserver(t, b)
		alice, bob := hsA.user("alice"), hsB.user("bob")
		for v := 1; v <= 12; v++ {
			t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
				hsA, hsB := hsA.with(t), hsB.with(t)
				roomID := hsA.createRoom(alice, v, "public_chat", nil)
				joinPDU := join(t, hsA, hsB, roomID, bob)
				if m, _ := hsB.e.Membership(context.Background(), roomID, bob); m != spec.Join {
					t.Fatalf("bob's membership on his server: %q", m)
				}
				sameState(t, roomID, hsA, hsB)

				// Alice talks, Bob's server receives it.
				evs := hsA.send(roomID, message(alice, "hello"), state(alice, spec.MRoomTopic, "", map[string]string{"topic": "t1"}))
				mustStatus(t, hsB.deliver(hsA, roomID, evs...), rooms.StatusAccepted)
				// Bob answers; Alice's server receives it.
				reply := hsB.send(roomID, message(bob, "hi"))
				res := hsA.deliver(hsB, roomID, reply...)
				mustStatus(t, res, rooms.StatusAccepted)
				if res[0].Event == nil || res[0].Event.Pos == 0 {
					t.Fatalf("accepted event has no stream position: %+v", res[0].Event)
				}
				if got := hsB.stateContent(roomID, spec.MRoomTopic, "")["topic"]; got != "t1" {
					t.Fatalf("topic on bob's server: %v", got)
				}
				sameState(t, roomID, hsA, hsB)

				// Ingesting again changes nothing.
				again := hsA.deliver(hsB, roomID, reply...)
				if !again[0].Known || again[0].Status != rooms.StatusAccepted {
					t.Fatalf("second ingest: %+v", again[0])
				}
				again = hsA.ingest(roomID, []gomatrixserverlib.PDU{joinPDU})
				if !again[0].Known {
					t.Fatalf("join ingested twice: %+v", again[0])
				}
				// Both servers have one forward extremity, the reply.
				next := hsA.send(roomID, message(alice, "after"))
				if prev := next[0].PrevEventIDs(); len(prev) != 1 || prev[0] != reply[0].EventID() {
					t.Fatalf("alice's next event builds on %v, want [%s]", prev, reply[0].EventID())
				}
				mustStatus(t, hsB.deliver(hsA, roomID, next...), rooms.StatusAccepted)
			})
		}
	})
}

// TestIngestGaps covers events whose auth or prev events are unknown: they
// are not stored and their results say what is missing; the missing events
// (as outliers) with the state before them, as /state_ids gives it, fill
// the gap, and the missing history can arrive later without disturbing the
// room.
func TestIngestGaps(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		hsA, hsB := startHomeserver(t, b), startHomeserver(t, b)
		alice, bob := hsA.user("alice"), hsB.user("bob")
		roomID := hsA.createRoom(alice, 10, "public_chat", nil)
		join(t, hsA, hsB, roomID, bob)
		ver := hsA.version(roomID)

		// A chain of three events on A; B receives only the last.
		chain := hsA.send(roomID, message(alice, "1"), state(alice, spec.MRoomName, "", map[string]string{"name": "gap"}), message(alice, "3"))
		m1, name, m3 := chain[0], chain[1], chain[2]
		res := hsB.deliver(hsA, roomID, m3)
		if res[0].Stored || !errors.Is(res[0].Err, rooms.ErrMissingPrevEvents) || !slices.Equal(res[0].MissingPrevs, []string{name.EventID()}) {
			t.Fatalf("gap: %+v", res[0])
		}
		if ev, err := hsB.e.EventByID(ctx, m3.EventID()); err != nil || ev != nil {
			t.Fatalf("event with a gap was stored: %v %v", ev, err)
		}

		// Fill it as federation does: the prev event as an outlier, and the
		// state before it from A.
		mustStatus(t, hsB.ingest(roomID, wire(t, ver, name), rooms.AsOutliers()), rooms.StatusOutlier)
		if ev := hsB.stored(name.EventID()); ev.Pos != 0 {
			t.Fatal("outlier has a stream position")
		}
		before, err := hsA.e.StateAt(ctx, hsA.stored(name.EventID()), false)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, id := range hsA.byEventID(roomID, before) {
			ids = append(ids, id)
		}
		// Supplied state naming an unknown event fails the event, not the call.
		res = hsB.ingest(roomID, wire(t, ver, m3), rooms.WithPrevState(name.EventID(), append(slices.Clone(ids), "$unknownstateevent")))
		if res[0].Stored || res[0].Err == nil {
			t.Fatalf("bad supplied state: %+v", res[0])
		}
		res = hsB.ingest(roomID, wire(t, ver, m3), rooms.WithPrevState(name.EventID(), ids))
		mustStatus(t, res, rooms.StatusAccepted)
		if got := hsB.stateContent(roomID, spec.MRoomName, "")["name"]; got != "gap" {
			t.Fatalf("room name after the gap: %v", got)
		}
		// The history arrives later (backfill): it is stored, the outlier
		// joins the timeline, and the room still builds on m3 alone.
		res = hsB.deliver(hsA, roomID, m1, name)
		mustStatus(t, res, rooms.StatusAccepted)
		if ev := hsB.stored(name.EventID()); ev.Status != rooms.StatusAccepted || ev.Pos == 0 {
			t.Fatalf("de-outliered event: status %d pos %d", ev.Status, ev.Pos)
		}
		next := hsB.send(roomID, message(bob, "next"))
		if prev := next[0].PrevEventIDs(); !slices.Equal(prev, []string{m3.EventID()}) {
			t.Fatalf("bob's next event builds on %v, want [%s]", prev, m3.EventID())
		}
		sameState(t, roomID, hsA, hsB)

		// An unknown auth event: not stored, listed.
		forged := hsB.forge(hsA, roomID, message(bob, "x"), func(pe *gomatrixserverlib.ProtoEvent) {
			pe.AuthEvents = append(pe.AuthEvents.([]string), "$unknownunknownunknownunknownunknownunknown0")
		})
		res = hsA.ingest(roomID, []gomatrixserverlib.PDU{forged})
		if res[0].Stored || !errors.Is(res[0].Err, rooms.ErrMissingAuthEvents) || len(res[0].MissingAuth) != 1 {
			t.Fatalf("unknown auth event: %+v", res[0])
		}
	})
}

// redactionKeys lists, per the spec's redaction algorithm of each room
// version, the top-level keys and, per event type, the content keys a
// redacted event keeps.
func redactionKeys(v int) (top []string, content map[string][]string) {
	top = []string{"event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth", "prev_events", "auth_events", "origin_server_ts"}
	if v <= 10 {
		top = append(top, "prev_state", "origin", "membership")
	}
	content = map[string][]string{
		spec.MRoomMember:             {"membership"},
		spec.MRoomCreate:             {"creator"},
		spec.MRoomJoinRules:          {"join_rule"},
		spec.MRoomPowerLevels:        {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"},
		spec.MRoomHistoryVisibility:  {"history_visibility"},
		"m.room.aliases":             nil,
		spec.MRoomThirdPartyInvite:   nil,
		spec.MRoomRedaction:          nil,
		"m.room.message":             nil,
		"org.example.custom.message": nil,
	}
	if v <= 5 {
		content["m.room.aliases"] = []string{"aliases"}
	}
	if v >= 8 {
		content[spec.MRoomJoinRules] = append(content[spec.MRoomJoinRules], "allow")
	}
	if v >= 9 {
		content[spec.MRoomMember] = append(content[spec.MRoomMember], "join_authorised_via_users_server")
	}
	if v >= 11 {
		content[spec.MRoomMember] = append(content[spec.MRoomMember], "third_party_invite")
		content[spec.MRoomCreate] = nil // all keys
		content[spec.MRoomPowerLevels] = append(content[spec.MRoomPowerLevels], "invite")
		content[spec.MRoomRedaction] = []string{"redacts"}
	}
	return top, content
}

// keysOf returns the keys of a JSON object.
func keysOf(t testing.TB, raw json.RawMessage) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// checkRedacted verifies that stored is original redacted by the room
// version's algorithm: exactly the allowed keys of the original remain.
func checkRedacted(t testing.TB, v int, original, stored *rooms.Event) {
	t.Helper()
	if stored.RedactedBy == "" {
		t.Fatalf("v%d %s: not marked redacted", v, original.Type())
	}
	top, content := redactionKeys(v)
	orig, got := keysOf(t, original.JSON()), keysOf(t, stored.JSON())
	for k := range orig {
		_, kept := got[k]
		if kept != slices.Contains(top, k) {
			t.Errorf("v%d %s: top-level key %q kept=%v", v, original.Type(), k, kept)
		}
	}
	allowed, all := content[original.Type()], original.Type() == spec.MRoomCreate && v >= 11
	oc, gc := keysOf(t, orig["content"]), keysOf(t, got["content"])
	for k := range oc {
		_, kept := gc[k]
		if want := all || slices.Contains(allowed, k); kept != want {
			t.Errorf("v%d %s: content key %q kept=%v, want %v", v, original.Type(), k, kept, want)
		}
	}
	if len(gc) > len(oc) {
		t.Errorf("v%d %s: redaction added content keys: %s", v, original.Type(), got["content"])
	}
	if tpi, ok := gc["third_party_invite"]; ok {
		if k := keysOf(t, tpi); len(k) != 1 || k["signed"] == nil {
			t.Errorf("v%d: third_party_invite keeps %s, want only signed", v, tpi)
		}
	}
}

// TestRedactionEveryVersion redacts events of every type the redaction
// algorithms treat specially, in every room version, locally and on a
// server that receives the events and their redactions over federation:
// the stored JSON keeps exactly the keys the version's algorithm keeps.
func TestRedactionEveryVersion(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		hsA, hsB := startHomeserver(t, b), startHomeserver(t, b)
		alice, bob := hsA.user("alice"), hsB.user("bob")
		for v := 1; v <= 12; v++ {
			t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
				hsA, hsB := hsA.with(t), hsB.with(t)
				roomID := hsA.createRoom(alice, v, "public_chat", nil)
				join(t, hsA, hsB, roomID, bob)
				pl := hsA.stateContent(roomID, spec.MRoomPowerLevels, "")
				pl["extra"] = 1
				targets := hsA.send(roomID,
					state(alice, spec.MRoomThirdPartyInvite, "tok", map[string]any{"display_name": "x", "key_validity_url": "https://example.org", "public_key": "abc"}),
					message(alice, "secret"),
					rooms.EventSpec{Sender: alice, Type: "org.example.custom.message", Content: map[string]any{"a": 1}},
					state(alice, spec.MRoomMember, alice, map[string]any{
						"membership": "join", "displayname": "Alice", "join_authorised_via_users_server": alice,
						"third_party_invite": map[string]any{"display_name": "x", "signed": map[string]any{"mxid": alice, "token": "tok", "signatures": map[string]any{}}},
					}),
					state(alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public", "allow": []any{}, "extra": 1}),
					state(alice, spec.MRoomPowerLevels, "", pl),
					state(alice, spec.MRoomHistoryVisibility, "", map[string]any{"history_visibility": "shared", "extra": 1}),
					state(alice, "m.room.aliases", hsA.name, map[string]any{"aliases": []string{"#x:" + hsA.name}, "extra": 1}),
				)
				create, err := hsA.e.CurrentStateEvent(context.Background(), roomID, spec.MRoomCreate, "")
				if err != nil {
					t.Fatal(err)
				}
				all := slices.Clone(targets)
				var reds []*rooms.Event
				redact := func(target *rooms.Event) *rooms.Event {
					r := hsA.send(roomID, rooms.EventSpec{Sender: alice, Type: spec.MRoomRedaction, Redacts: target.EventID(), Content: map[string]any{"reason": "r"}})[0]
					reds = append(reds, r)
					return r
				}
				for _, target := range targets {
					redact(target)
				}
				red := reds[1] // of the message
				redact(red)    // a redaction of a redaction
				redact(create) // last: later events would need the create event's content
				all = append(all, red, create)
				mustStatus(t, hsB.deliver(hsA, roomID, append(slices.Clone(targets), reds...)...), rooms.StatusAccepted)
				for _, original := range all {
					onA, onB := hsA.stored(original.EventID()), hsB.stored(original.EventID())
					checkRedacted(t, v, original, onA)
					checkRedacted(t, v, original, onB)
					if string(onA.JSON()) != string(onB.JSON()) {
						t.Errorf("v%d %s: redacted differently on the two servers", v, original.Type())
					}
				}
			})
		}
		// A redaction that arrives before its target waits for it.
		for _, v := range []int{10, 12} {
			roomID := hsA.createRoom(alice, v, "public_chat", nil)
			join(t, hsA, hsB, roomID, bob)
			target := hsB.send(roomID, message(bob, "oops"))[0]
			red := hsB.forge(hsA, roomID, rooms.EventSpec{Sender: bob, Type: spec.MRoomRedaction, Redacts: target.EventID(), Content: map[string]any{}}, nil)
			mustStatus(t, hsA.ingest(roomID, []gomatrixserverlib.PDU{red}), rooms.StatusAccepted)
			mustStatus(t, hsA.deliver(hsB, roomID, target), rooms.StatusAccepted)
			if got := hsA.stored(target.EventID()); got.RedactedBy != red.EventID() || len(keysOf(t, got.Content())) != 0 {
				t.Fatalf("v%d: target of an earlier redaction: redacted by %q, content %s", v, got.RedactedBy, got.Content())
			}
		}
	})
}

// TestImportRoomStateRefusesBadJoin: a join the state does not allow (an
// invite-only room) is refused and nothing is stored — the room stays
// unknown to the joining server.
func TestImportRoomStateRefusesBadJoin(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		hsA, hsB := startHomeserver(t, b), startHomeserver(t, b)
		alice, bob := hsA.user("alice"), hsB.user("bob")
		roomID := hsA.createRoom(alice, 12, "private_chat", nil)
		ver := hsA.version(roomID)
		joinPDU := hsB.forge(hsA, roomID, member(bob, bob, spec.Join), nil)
		mustStatus(t, hsA.ingest(roomID, []gomatrixserverlib.PDU{joinPDU}), rooms.StatusRejected)
		st, err := hsA.e.CurrentState(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		stateEvs, err := hsA.e.StateEvents(ctx, ver, st)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, ev := range stateEvs {
			ids = append(ids, ev.EventID())
		}
		chain, err := hsA.e.AuthChain(ctx, roomID, ids)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hsB.e.ImportRoomState(ctx, ver, wire(t, ver, stateEvs...), wire(t, ver, chain...), joinPDU); err == nil {
			t.Fatal("import of a join the state forbids succeeded")
		}
		if ok, err := hsB.e.RoomExists(ctx, roomID); err != nil || ok {
			t.Fatalf("room exists after a refused import: %v %v", ok, err)
		}
		// A state without a create event is refused too.
		var noCreate []*rooms.Event
		for _, ev := range stateEvs {
			if ev.Type() != spec.MRoomCreate {
				noCreate = append(noCreate, ev)
			}
		}
		if _, err := hsB.e.ImportRoomState(ctx, ver, wire(t, ver, noCreate...), nil, joinPDU); err == nil {
			t.Fatal("import without a create event succeeded")
		}
	})
}
