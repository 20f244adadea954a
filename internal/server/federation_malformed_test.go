package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/testutil"
)

// TestMalformedFederationRequests is the federation half of
// TestMalformedRequests: every endpoint authenticated by X-Matrix gets
// properly signed requests from another server with garbage in the path,
// the query and the body. None may answer 5xx; a body that is not JSON is
// 400 M_NOT_JSON. The routes come from the router.
func TestMalformedFederationRequests(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		n := testutil.NewNetwork(t, "hs1", "hs2")
		hs1, hs2 := n.Start(t, b, "hs1"), n.Start(t, b, "hs2")
		alice := hs1.NewUser(t, "alice", "pw")
		room := alice.MustDo(200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).JSON["room_id"].(string)
		event := alice.MustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/send/m.room.message/t1",
			map[string]any{"msgtype": "m.text", "body": "hi"}).JSON["event_id"].(string)
		plausible := map[string]string{"roomId": room, "eventId": event, "userId": "@bob:hs2", "txnId": "txn1",
			"serverName": "hs2", "queryType": "profile", "keyId": "ed25519:x", "mediaId": "abc"}
		garbage := []string{"x", "!x", "$x", "@x", " ", strings.Repeat("y", 300), "@bob:hs1", "!nope:hs1", "$nope"}

		anon := hs1.Client(t)
		const fakeXMatrix = `X-Matrix origin="hs2",destination="hs1",key="ed25519:x",sig="x"`
		rng := rand.New(rand.NewPCG(7, 7))
		checked := 0
		for _, rt := range hs1.Routes() {
			if rt.Auth != httpx.RouteSigned {
				continue
			}
			checked++
			method, pattern, _ := strings.Cut(rt.Pattern, " ")
			render := func(override map[string]string) string {
				segs := strings.Split(pattern, "/")
				for i, s := range segs {
					if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
						name := strings.Trim(s, "{}.")
						v, ok := override[name]
						if !ok {
							v = plausible[name]
						}
						if v == "" {
							v = "x"
						}
						segs[i] = url.PathEscape(v)
					}
				}
				return strings.Join(segs, "/")
			}
			send := func(what, uri string, body []byte, want func(status int, errcode string) bool) {
				t.Helper()
				resp, err := hs2.Federation.Client.DoRaw(ctx, "hs1", method, uri, body, true)
				if err != nil {
					t.Fatalf("%s %s (%s): %v", method, uri, what, err)
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var e struct {
					ErrCode string `json:"errcode"`
				}
				_ = json.Unmarshal(raw, &e)
				if resp.StatusCode >= 500 || !want(resp.StatusCode, e.ErrCode) {
					t.Errorf("%s %s (%s): %d %s", method, uri, what, resp.StatusCode, raw)
				}
			}
			anything := func(int, string) bool { return true }
			hasBody := method == http.MethodPut || method == http.MethodPost
			var body []byte
			if hasBody {
				body = []byte("{}")
			}
			// Garbage in each path parameter.
			for _, seg := range strings.Split(pattern, "/") {
				if !strings.HasPrefix(seg, "{") {
					continue
				}
				name := strings.Trim(seg, "{}.")
				for _, g := range garbage {
					send("garbage "+name, render(map[string]string{name: g}), body, anything)
				}
			}
			// Bodies that are not JSON, or not an object.
			if hasBody {
				// A body that is not JSON cannot be signed: it is refused
				// before the signature is checked.
				r := anon.DoWithHeaders(method, render(nil), "this is not JSON", map[string]string{"Authorization": fakeXMatrix})
				if r.Status != 400 || r.ErrCode() != "M_NOT_JSON" {
					t.Errorf("%s %s (not JSON): %d %s", method, render(nil), r.Status, r.Body)
				}
				for _, shape := range []string{`[1,2]`, `"s"`, `42`, `null`} {
					send("body "+shape, render(nil), []byte(shape), func(s int, _ string) bool { return s >= 400 })
				}
			}
			// Random queries and bodies.
			for i := range 10 {
				uri := render(nil) + "?" + randomFedQuery(rng)
				var b []byte
				if hasBody {
					b = randomFedBody(rng)
				}
				send(fmt.Sprintf("random %d", i), uri, b, anything)
			}
		}
		if checked < 10 {
			t.Fatalf("only %d signed routes", checked)
		}
	})
}

// randomFedQuery makes a query string from the parameters federation
// endpoints read, with odd values.
func randomFedQuery(rng *rand.Rand) string {
	names := []string{"event_id", "v", "limit", "room_alias", "user_id", "field", "ver", "since", "include_all_networks", "third_party_instance_id", "access_token"}
	values := []string{"", "0", "-1", "99999999999999999999", "x", "$x", "!x:hs1", "#x:hs1", "@x:hs1", "true", "%00"}
	q := url.Values{}
	for range rng.IntN(4) + 1 {
		q.Add(names[rng.IntN(len(names))], values[rng.IntN(len(values))])
	}
	return q.Encode()
}

// randomFedBody makes a JSON object with the fields federation bodies
// carry, of random types.
func randomFedBody(rng *rand.Rand) []byte {
	fields := []string{"pdus", "edus", "origin", "origin_server_ts", "limit", "min_depth", "earliest_events", "latest_events",
		"event", "room_version", "invite_room_state", "filter", "since", "content", "type", "state_key", "sender"}
	values := []any{nil, 1, -5, "x", true, []any{}, []any{"x", 1}, map[string]any{}, map[string]any{"a": []any{nil}},
		[]any{map[string]any{"edu_type": "m.typing", "content": 1}}, []any{map[string]any{"room_id": 5}}}
	m := map[string]any{}
	for range rng.IntN(5) + 1 {
		m[fields[rng.IntN(len(fields))]] = values[rng.IntN(len(values))]
	}
	b, _ := json.Marshal(m)
	return b
}
