package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/testutil"
)

// Helpers of the room-level federation tests: servers of a network, rooms
// whose members span them, clients that wait for what federation brings.

// waitTimeout bounds every wait for federation to deliver something.
const waitTimeout = 30 * time.Second

// startServers starts the named servers of a new network on backend b.
func startServers(t testing.TB, b testutil.Backend, names ...string) (*testutil.Network, []*testutil.Server) {
	t.Helper()
	n := testutil.NewNetwork(t, names...)
	out := make([]*testutil.Server, len(names))
	for i, name := range names {
		out[i] = n.Start(t, b, name)
	}
	return n, out
}

// joinOver makes userID, of joiner, join a room of resident the way
// make_join and send_join do: an event from the resident's template,
// signed by the joiner, accepted by the resident, and the room imported by
// the joiner from the state before the join and its auth chain.
func joinOver(t testing.TB, resident, joiner *testutil.Server, roomID, userID string) {
	t.Helper()
	ctx := context.Background()
	ver, err := resident.Rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	stateKey := userID
	_, pe := template(t, resident, roomID, rooms.EventSpec{Sender: userID, Type: spec.MRoomMember,
		StateKey: &stateKey, Content: map[string]any{"membership": spec.Join}})
	pdu := signAs(t, joiner, ver, pe)
	res, err := resident.Rooms.IngestEvents(ctx, roomID, []gomatrixserverlib.PDU{pdu})
	if err != nil || !res[0].Stored || res[0].Status != rooms.StatusAccepted {
		t.Fatalf("join on the resident: %v %+v", err, res)
	}
	before, err := resident.Rooms.StateAt(ctx, res[0].Event, false)
	if err != nil {
		t.Fatal(err)
	}
	state, err := resident.Rooms.StateEvents(ctx, ver, before)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{pdu.EventID()}
	for _, ev := range state {
		ids = append(ids, ev.EventID())
	}
	chain, err := resident.Rooms.AuthChain(ctx, roomID, ids)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joiner.Rooms.ImportRoomState(ctx, ver, asPDUs(t, ver, state), asPDUs(t, ver, chain), pdu); err != nil {
		t.Fatalf("import on the joiner: %v", err)
	}
}

// signAs builds and signs an event skeleton as server s.
func signAs(t testing.TB, s *testutil.Server, ver gomatrixserverlib.RoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	t.Helper()
	return signWith(t, s.Config.ServerName, s.SigningKey, ver, pe)
}

// signWith builds and signs an event skeleton as server with key.
func signWith(t testing.TB, server string, key *federation.SigningKey, ver gomatrixserverlib.RoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	t.Helper()
	pdu, err := gomatrixserverlib.MustGetRoomVersion(ver).NewEventBuilderFromProtoEvent(pe).
		Build(time.Now(), spec.ServerName(server), gomatrixserverlib.KeyID(key.ID), key.Private)
	if err != nil {
		t.Fatalf("build event: %v", err)
	}
	return pdu
}

// template returns the skeleton of an event of a room as resident would
// build it (make_join's template, for any event).
func template(t testing.TB, resident *testutil.Server, roomID string, es rooms.EventSpec) (gomatrixserverlib.RoomVersion, *gomatrixserverlib.ProtoEvent) {
	t.Helper()
	ctx := context.Background()
	ver, err := resident.Rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	pe, err := resident.Rooms.EventTemplate(ctx, roomID, es)
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	return ver, pe
}

// sendTxn sends a transaction from one server to another, signed, and
// returns the per-PDU results (or the error answer).
func sendTxn(t testing.TB, from *testutil.Server, to, txnID string, pdus []json.RawMessage, edus []map[string]any) (map[string]map[string]string, error) {
	t.Helper()
	body := map[string]any{"origin": from.Config.ServerName, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus}
	if edus != nil {
		body["edus"] = edus
	}
	var resp struct {
		PDUs map[string]map[string]string `json:"pdus"`
	}
	err := from.Federation.Client.Do(context.Background(), to, "PUT", "/_matrix/federation/v1/send/"+url.PathEscape(txnID), body, &resp)
	return resp.PDUs, err
}

// asPDUs turns stored events into PDUs as another server receives them.
func asPDUs(t testing.TB, ver gomatrixserverlib.RoomVersion, evs []*rooms.Event) []gomatrixserverlib.PDU {
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

// txnCounter makes client transaction IDs unique within the test binary.
var txnCounter atomic.Int64

// send sends an event of type typ to a room and returns its ID.
func send(t testing.TB, c *testutil.Client, roomID, typ string, content any) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/%s/t%d", url.PathEscape(roomID), typ, txnCounter.Add(1))
	return c.MustDo(200, "PUT", path, content).JSON["event_id"].(string)
}

// say sends a text message.
func say(t testing.TB, c *testutil.Client, roomID, body string) string {
	t.Helper()
	return send(t, c, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// setState sets a state event and returns its ID.
func setState(t testing.TB, c *testutil.Client, roomID, typ, stateKey string, content any) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/state/%s/%s", url.PathEscape(roomID), typ, url.PathEscape(stateKey))
	return c.MustDo(200, "PUT", path, content).JSON["event_id"].(string)
}

// newRoom creates a room and returns its ID.
func newRoom(t testing.TB, c *testutil.Client, body map[string]any) string {
	t.Helper()
	return c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body).JSON["room_id"].(string)
}

// waitUntil polls cond until it holds, failing the test after
// waitTimeout with what.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitEvent waits until c can see an event of a room.
func waitEvent(t testing.TB, c *testutil.Client, roomID, eventID string) map[string]any {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/event/%s", url.PathEscape(roomID), url.PathEscape(eventID))
	var ev map[string]any
	waitUntil(t, "event "+eventID+" on "+c.BaseURL, func() bool {
		r := c.Do("GET", path, nil)
		ev = r.JSON
		return r.Status == 200
	})
	return ev
}

// timeline returns the message bodies of a room's timeline as c sees it,
// oldest first (paging back through all of it, backfill included).
func timeline(t testing.TB, c *testutil.Client, roomID string) []string {
	t.Helper()
	var out []string
	from := ""
	for range 100 {
		q := url.Values{"dir": {"b"}, "limit": {"50"}}
		if from != "" {
			q.Set("from", from)
		}
		r := c.MustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil)
		chunk, _ := r.JSON["chunk"].([]any)
		for _, raw := range chunk {
			ev := raw.(map[string]any)
			if ev["type"] == "m.room.message" {
				content, _ := ev["content"].(map[string]any)
				body, _ := content["body"].(string)
				out = append([]string{body}, out...)
			}
		}
		end, _ := r.JSON["end"].(string)
		if end == "" {
			return out
		}
		from = end
	}
	t.Fatal("timeline: too many pages")
	return nil
}

// currentState returns a room's current state on s as (type, state_key) →
// event ID, comparable across servers.
func currentState(t testing.TB, s *testutil.Server, roomID string) map[rooms.StateKey]string {
	t.Helper()
	ctx := context.Background()
	m, err := s.Rooms.CurrentState(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.Rooms.RoomStateEvents(ctx, roomID, m)
	if err != nil {
		t.Fatal(err)
	}
	out := map[rooms.StateKey]string{}
	for _, ev := range evs {
		out[ev.Key()] = ev.EventID()
	}
	return out
}

// stateOn returns the content of the current state event at key on
// s, or nil.
func stateOn(t testing.TB, s *testutil.Server, roomID, typ, stateKey string) map[string]any {
	t.Helper()
	ev, err := s.Rooms.CurrentStateEvent(context.Background(), roomID, typ, stateKey)
	if err != nil {
		t.Fatal(err)
	}
	if ev == nil {
		return nil
	}
	var c map[string]any
	if err := json.Unmarshal(ev.Content(), &c); err != nil {
		t.Fatal(err)
	}
	return c
}
