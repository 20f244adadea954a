package federation_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/testutil"
)

// memberNet is a set of federating test servers for the membership tests,
// with helpers named after what the tests do.
type memberNet struct {
	t  testing.TB
	hs map[string]*testutil.Server
}

// newMemberNet starts servers with the given names on backend b.
func newMemberNet(t testing.TB, b testutil.Backend, names ...string) *memberNet {
	t.Helper()
	network := testutil.NewNetwork(t, names...)
	n := &memberNet{t: t, hs: map[string]*testutil.Server{}}
	for _, name := range names {
		n.hs[name] = network.Start(t, b, name)
	}
	return n
}

// user creates a user on a server.
func (n *memberNet) user(server, localpart string) *testutil.Client {
	n.t.Helper()
	return n.hs[server].NewUser(n.t, localpart, "password1234")
}

// roomPath is the client API path of a room.
func roomPath(roomID string) string { return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) }

// createRoom creates a room and returns its ID.
func createRoom(t *testing.T, c *testutil.Client, body map[string]any) string {
	t.Helper()
	res := c.MustDo(200, "POST", "/_matrix/client/v3/createRoom", body)
	id, _ := res.JSON["room_id"].(string)
	if id == "" {
		t.Fatalf("createRoom: %s", res.Body)
	}
	return id
}

// joinVia joins a room by ID or alias through the via servers.
func joinVia(c *testutil.Client, target string, via ...string) *testutil.Response {
	q := url.Values{"via": via}
	path := "/_matrix/client/v3/join/" + url.PathEscape(target)
	if len(via) > 0 {
		path += "?" + q.Encode()
	}
	return c.Do("POST", path, map[string]any{})
}

// membershipOf returns userID's membership in the room as c's server sees
// it ("" when it has none or c may not see it).
func membershipOf(c *testutil.Client, roomID, userID string) string {
	res := c.Do("GET", roomPath(roomID)+"/state/m.room.member/"+url.PathEscape(userID), nil)
	m, _ := res.JSON["membership"].(string)
	return m
}

// stateContent returns the content of a state event as c's server sees it,
// or nil.
func stateContent(c *testutil.Client, roomID, typ, key string) map[string]any {
	res := c.Do("GET", roomPath(roomID)+"/state/"+typ+"/"+url.PathEscape(key), nil)
	if res.Status != 200 {
		return nil
	}
	return res.JSON
}

// syncOnce runs an initial /sync without waiting.
func syncOnce(t *testing.T, c *testutil.Client, filter string) map[string]any {
	t.Helper()
	path := "/_matrix/client/v3/sync?timeout=0"
	if filter != "" {
		path += "&filter=" + url.QueryEscape(filter)
	}
	return c.MustDo(200, "GET", path, nil).JSON
}

// dig walks nested JSON objects.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// eventTypes lists "type/state_key" of a list of events.
func eventTypes(list any) []string {
	evs, _ := list.([]any)
	var out []string
	for _, e := range evs {
		typ, _ := dig(e, "type").(string)
		key, _ := dig(e, "state_key").(string)
		out = append(out, typ+"/"+key)
	}
	return out
}

// contains reports whether list holds s.
func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// eventually waits up to 20 seconds for cond, for what crosses servers
// asynchronously (events the federation sender delivers).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fedCall makes a signed federation request from server from to server
// to and returns the remote error (nil on success).
func (n *memberNet) fedCall(from, to, method, uri string, body, out any) *federation.RemoteError {
	n.t.Helper()
	err := n.hs[from].Federation.Client.Do(context.Background(), to, method, uri, body, out)
	if err == nil {
		return nil
	}
	var re *federation.RemoteError
	if !errors.As(err, &re) {
		n.t.Fatalf("%s %s: %v", method, uri, err)
	}
	return re
}

// wantRemoteError checks the status and errcode of a federation answer.
func wantRemoteError(t *testing.T, re *federation.RemoteError, status int, errcode string) {
	t.Helper()
	if re == nil || re.Status != status || re.ErrCode != errcode {
		t.Fatalf("got %v, want %d %s", re, status, errcode)
	}
}

// makeJoinTemplate asks to for a join template for userID (of from).
func (n *memberNet) makeJoinTemplate(from, to, roomID, userID string) (gomatrixserverlib.RoomVersion, *gomatrixserverlib.ProtoEvent) {
	n.t.Helper()
	var resp struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	uri := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?ver=10&ver=11&ver=12"
	if re := n.fedCall(from, to, "GET", uri, nil, &resp); re != nil {
		n.t.Fatalf("make_join: %v", re)
	}
	var pe gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(resp.Event, &pe); err != nil {
		n.t.Fatal(err)
	}
	return gomatrixserverlib.RoomVersion(resp.RoomVersion), &pe
}

// buildEvent builds an event from a proto event, signed as server with
// keyID and priv.
func (n *memberNet) buildEvent(ver gomatrixserverlib.RoomVersion, pe *gomatrixserverlib.ProtoEvent, server, keyID string, priv ed25519.PrivateKey) gomatrixserverlib.PDU {
	n.t.Helper()
	impl := gomatrixserverlib.MustGetRoomVersion(ver)
	pe.Version = impl
	pdu, err := impl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), spec.ServerName(server), gomatrixserverlib.KeyID(keyID), priv)
	if err != nil {
		n.t.Fatal(err)
	}
	return pdu
}

// randomKey is an ed25519 key nobody published: signatures made with it
// are forgeries.
func randomKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}
