package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"github.com/palpo-go/palpo/internal/testutil"
)

// fedGet makes a signed GET from one server to another and decodes the
// answer.
func fedGet(t *testing.T, from *testutil.Server, to, uri string) (map[string]any, error) {
	t.Helper()
	var out map[string]any
	err := from.Federation.Client.Do(context.Background(), to, "GET", uri, nil, &out)
	return out, err
}

// pduBodies returns the body of each PDU of a list ("" for redacted ones).
func pduBodies(t *testing.T, list any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, raw := range list.([]any) {
		p := raw.(map[string]any)
		content, _ := p["content"].(map[string]any)
		body, _ := content["body"].(string)
		if p["type"] == "m.room.message" {
			out[body] = body
			if body == "" {
				out["(redacted)"] = "(redacted)"
			}
		}
	}
	return out
}

// TestHistoryForOtherServers checks what other servers may read of a
// room's history: only servers in the room get its state and history, the
// room's ACL shuts servers out, and events from before a server's users
// could see them (history visibility "joined") come redacted.
func TestHistoryForOtherServers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		_, srv := startServers(t, b, "hs1", "hs2", "hs3")
		hs1, hs2, hs3 := srv[0], srv[1], srv[2]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat", "initial_state": []any{
			map[string]any{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}},
		}})
		secret := say(t, alice, roomID, "before bob joined")
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		after := say(t, alice, roomID, "after bob joined")
		waitEvent(t, bob, roomID, after)
		room := url.PathEscape(roomID)
		const v1 = "/_matrix/federation/v1/"

		// /event: the event before bob's join comes redacted.
		out, err := fedGet(t, hs2, "hs1", v1+"event/"+url.PathEscape(secret))
		if err != nil {
			t.Fatal(err)
		}
		if got := pduBodies(t, out["pdus"]); got["before bob joined"] != "" || got["(redacted)"] == "" {
			t.Fatalf("/event before the join: %v", out["pdus"])
		}
		out, err = fedGet(t, hs2, "hs1", v1+"event/"+url.PathEscape(after))
		if err != nil || pduBodies(t, out["pdus"])["after bob joined"] == "" {
			t.Fatalf("/event after the join: %v %v", out, err)
		}
		// /backfill: the same, in one answer.
		out, err = fedGet(t, hs2, "hs1", v1+"backfill/"+room+"?"+url.Values{"v": {after}, "limit": {"20"}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		if got := pduBodies(t, out["pdus"]); got["after bob joined"] == "" || got["before bob joined"] != "" || got["(redacted)"] == "" {
			t.Fatalf("/backfill: %v", got)
		}
		// /state_ids and /state at the last event; /event_auth.
		ids, err := fedGet(t, hs2, "hs1", v1+"state_ids/"+room+"?event_id="+url.QueryEscape(after))
		if err != nil {
			t.Fatal(err)
		}
		state, err := fedGet(t, hs2, "hs1", v1+"state/"+room+"?event_id="+url.QueryEscape(after))
		if err != nil {
			t.Fatal(err)
		}
		pduIDs, _ := ids["pdu_ids"].([]any)
		pdus, _ := state["pdus"].([]any)
		chain, _ := ids["auth_chain_ids"].([]any)
		if len(pduIDs) < 6 || len(pdus) != len(pduIDs) || len(chain) == 0 {
			t.Fatalf("/state_ids %v, /state %d events", ids, len(pdus))
		}
		auth, err := fedGet(t, hs2, "hs1", v1+"event_auth/"+room+"/"+url.PathEscape(after))
		if err != nil || len(auth["auth_chain"].([]any)) == 0 {
			t.Fatalf("/event_auth: %v %v", auth, err)
		}
		// /get_missing_events between the join and the last event.
		var missing struct {
			Events []json.RawMessage `json:"events"`
		}
		err = hs2.Federation.Client.Do(context.Background(), "hs1", "POST", v1+"get_missing_events/"+room,
			map[string]any{"earliest_events": []string{secret}, "latest_events": []string{after}, "limit": 10}, &missing)
		if err != nil || len(missing.Events) != 1 { // bob's join
			t.Fatalf("/get_missing_events: %d events, %v", len(missing.Events), err)
		}

		// /timestamp_to_event: the nearest event hs2 may see.
		ts := stored(t, hs1, after).OriginServerTS()
		near, err := fedGet(t, hs2, "hs1", v1+"timestamp_to_event/"+room+"?dir=b&ts="+fmt.Sprint(int64(ts)))
		if err != nil || near["event_id"] != after {
			t.Fatalf("/timestamp_to_event: %v %v", near, err)
		}
		_, err = fedGet(t, hs2, "hs1", v1+"timestamp_to_event/"+room+"?dir=f&ts="+fmt.Sprint(int64(ts)+3600_000))
		wantRemote(t, err, 404, "M_NOT_FOUND")

		// A server with nobody in the room gets no state or history.
		for _, uri := range []string{
			"state_ids/" + room + "?event_id=" + url.QueryEscape(after),
			"state/" + room + "?event_id=" + url.QueryEscape(after),
			"backfill/" + room + "?v=" + url.QueryEscape(after) + "&limit=5",
			"event_auth/" + room + "/" + url.PathEscape(after),
		} {
			_, err := fedGet(t, hs3, "hs1", v1+uri)
			wantRemote(t, err, 403, "M_FORBIDDEN")
		}
		out, err = fedGet(t, hs3, "hs1", v1+"event/"+url.PathEscape(after))
		if err != nil || pduBodies(t, out["pdus"])["(redacted)"] == "" {
			t.Fatalf("/event for an outsider: %v %v", out, err)
		}

		// Malformed and unknown.
		for _, c := range []struct {
			uri     string
			status  int
			errcode string
		}{
			{"state_ids/" + room, 400, "M_MISSING_PARAM"},
			{"state_ids/" + room + "?event_id=%24nope", 404, "M_NOT_FOUND"},
			{"state_ids/" + url.PathEscape("!unknown:hs1") + "?event_id=" + url.QueryEscape(after), 404, "M_NOT_FOUND"},
			{"state_ids/not-a-room?event_id=" + url.QueryEscape(after), 400, "M_INVALID_PARAM"},
			{"event/" + url.PathEscape("$nope"), 404, "M_NOT_FOUND"},
			{"backfill/" + room + "?limit=5", 400, "M_MISSING_PARAM"},
			{"backfill/" + room + "?v=" + url.QueryEscape(after), 400, "M_MISSING_PARAM"},
			{"backfill/" + room + "?v=" + url.QueryEscape(after) + "&limit=many", 400, "M_INVALID_PARAM"},
			{"timestamp_to_event/" + room + "?dir=f", 400, "M_MISSING_PARAM"},
			{"timestamp_to_event/" + room + "?ts=1", 400, "M_MISSING_PARAM"},
			{"timestamp_to_event/" + room + "?ts=x&dir=f", 400, "M_INVALID_PARAM"},
			{"timestamp_to_event/" + room + "?ts=1&dir=up", 400, "M_INVALID_PARAM"},
		} {
			_, err := fedGet(t, hs2, "hs1", v1+c.uri)
			wantRemote(t, err, c.status, c.errcode)
		}
		for _, body := range []any{map[string]any{"latest_events": []string{after}}, map[string]any{"earliest_events": 1, "latest_events": []string{}}} {
			err := hs2.Federation.Client.Do(context.Background(), "hs1", "POST", v1+"get_missing_events/"+room, body, nil)
			wantRemote(t, err, 400, "M_BAD_JSON")
		}

		// The room's ACL shuts hs2 out.
		setState(t, alice, roomID, "m.room.server_acl", "", map[string]any{"allow": []string{"hs1", "hs3"}})
		_, err = fedGet(t, hs2, "hs1", v1+"state_ids/"+room+"?event_id="+url.QueryEscape(after))
		wantRemote(t, err, 403, "M_FORBIDDEN")
		_, err = fedGet(t, hs2, "hs1", v1+"event/"+url.PathEscape(after))
		wantRemote(t, err, 403, "M_FORBIDDEN")
	})
}

// TestQueriesAcrossServers resolves aliases, profiles and public room
// directories of another server through the client API, and checks OpenID
// tokens the way a third party does.
func TestQueriesAcrossServers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		_, srv := startServers(t, b, "hs1", "hs2")
		hs1, hs2 := srv[0], srv[1]
		alice, bob := hs1.NewUser(t, "alice", "pw"), hs2.NewUser(t, "bob", "pw")
		roomID := newRoom(t, alice, map[string]any{"preset": "public_chat", "name": "The Room"})
		joinOver(t, hs1, hs2, roomID, bob.UserID)
		const cs = "/_matrix/client/v3/"

		// Aliases.
		alias := url.PathEscape("#room:hs1")
		alice.MustDo(200, "PUT", cs+"directory/room/"+alias, map[string]any{"room_id": roomID})
		r := bob.MustDo(200, "GET", cs+"directory/room/"+alias, nil)
		servers := toStringList(r.JSON["servers"])
		if r.JSON["room_id"] != roomID || !slices.Contains(servers, "hs1") || !slices.Contains(servers, "hs2") {
			t.Fatalf("remote alias: %s", r.Body)
		}
		wantClientErr(t, bob.Do("GET", cs+"directory/room/"+url.PathEscape("#nothing:hs1"), nil), 404, "M_NOT_FOUND")
		roomIDOut, via, err := hs2.RoomFederation.ResolveRemoteAlias(context.Background(), "#room:hs1")
		if err != nil || roomIDOut != roomID || !slices.Contains(via, "hs1") {
			t.Fatalf("ResolveRemoteAlias: %s %v %v", roomIDOut, via, err)
		}

		// Profiles.
		alice.MustDo(200, "PUT", cs+"profile/"+url.PathEscape(alice.UserID)+"/displayname", map[string]any{"displayname": "Alice A."})
		r = bob.MustDo(200, "GET", cs+"profile/"+url.PathEscape(alice.UserID), nil)
		if r.JSON["displayname"] != "Alice A." {
			t.Fatalf("remote profile: %s", r.Body)
		}
		r = bob.MustDo(200, "GET", cs+"profile/"+url.PathEscape(alice.UserID)+"/displayname", nil)
		if r.JSON["displayname"] != "Alice A." || len(r.JSON) != 1 {
			t.Fatalf("remote profile field: %s", r.Body)
		}
		wantClientErr(t, bob.Do("GET", cs+"profile/"+url.PathEscape("@nobody:hs1"), nil), 404, "M_NOT_FOUND")
		_, err = fedGet(t, hs2, "hs1", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(bob.UserID))
		wantRemote(t, err, 400, "M_INVALID_PARAM")
		_, err = fedGet(t, hs2, "hs1", "/_matrix/federation/v1/query/profile")
		wantRemote(t, err, 400, "M_MISSING_PARAM")

		// The public room directory, both forms.
		alice.MustDo(200, "PUT", cs+"directory/list/room/"+url.PathEscape(roomID), map[string]any{"visibility": "public"})
		for _, r := range []*testutil.Response{
			bob.MustDo(200, "GET", cs+"publicRooms?server=hs1", nil),
			bob.MustDo(200, "POST", cs+"publicRooms?server=hs1", map[string]any{"filter": map[string]any{"generic_search_term": "the room"}}),
		} {
			chunk, _ := r.JSON["chunk"].([]any)
			if len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != roomID {
				t.Fatalf("remote directory: %s", r.Body)
			}
		}
		r = bob.MustDo(200, "POST", cs+"publicRooms?server=hs1", map[string]any{"filter": map[string]any{"generic_search_term": "no such room"}})
		if chunk, _ := r.JSON["chunk"].([]any); len(chunk) != 0 {
			t.Fatalf("filtered remote directory: %s", r.Body)
		}

		// OpenID.
		r = bob.MustDo(200, "POST", cs+"user/"+url.PathEscape(bob.UserID)+"/openid/request_token", map[string]any{})
		token, _ := r.JSON["access_token"].(string)
		if token == "" || r.JSON["token_type"] != "Bearer" || r.JSON["matrix_server_name"] != "hs2" {
			t.Fatalf("request_token: %s", r.Body)
		}
		wantClientErr(t, bob.Do("POST", cs+"user/"+url.PathEscape(alice.UserID)+"/openid/request_token", map[string]any{}), 403, "M_FORBIDDEN")
		anon := hs2.Client(t)
		r = anon.MustDo(200, "GET", "/_matrix/federation/v1/openid/userinfo?access_token="+url.QueryEscape(token), nil)
		if r.JSON["sub"] != bob.UserID {
			t.Fatalf("userinfo: %s", r.Body)
		}
		wantClientErr(t, anon.Do("GET", "/_matrix/federation/v1/openid/userinfo?access_token=nope", nil), 401, "M_UNKNOWN_TOKEN")
		wantClientErr(t, anon.Do("GET", "/_matrix/federation/v1/openid/userinfo", nil), 401, "M_MISSING_TOKEN")
	})
}

// toStringList converts a decoded JSON array of strings.
func toStringList(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// wantClientErr checks a client API error answer.
func wantClientErr(t *testing.T, r *testutil.Response, status int, errcode string) {
	t.Helper()
	if r.Status != status || r.ErrCode() != errcode {
		t.Fatalf("got %d %s, want %d %s", r.Status, r.Body, status, errcode)
	}
}
