package push_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

const rulesBase = "/_matrix/client/v3/pushrules/"

// ruleIDs lists the rule IDs of one kind in the user's ruleset.
func ruleIDs(t *testing.T, c *testutil.Client, kind string) []string {
	t.Helper()
	list, _ := c.MustDo(200, "GET", rulesBase, nil).JSON["global"].(map[string]any)[kind].([]any)
	var out []string
	for _, r := range list {
		out = append(out, r.(map[string]any)["rule_id"].(string))
	}
	return out
}

func TestPushRulesDefaults(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		global := alice.MustDo(200, "GET", rulesBase, nil).JSON["global"].(map[string]any)
		for _, kind := range []string{"override", "content", "room", "sender", "underride"} {
			if _, ok := global[kind].([]any); !ok {
				t.Errorf("kind %s missing: %v", kind, global[kind])
			}
		}
		overrides := ruleIDs(t, alice, "override")
		if len(overrides) == 0 || overrides[0] != ".m.rule.master" {
			t.Fatalf("overrides %v", overrides)
		}
		for _, id := range []string{".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event", ".m.rule.is_user_mention",
			".m.rule.is_room_mention", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"} {
			if !contains(overrides, id) {
				t.Errorf("override rule %s missing", id)
			}
		}
		underrides := ruleIDs(t, alice, "underride")
		want := []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"}
		if len(underrides) != len(want) {
			t.Fatalf("underrides %v", underrides)
		}
		for i := range want {
			if underrides[i] != want[i] {
				t.Fatalf("underrides %v, want %v", underrides, want)
			}
		}
		// The user's ID is filled into the rules that need it.
		r := alice.MustDo(200, "GET", rulesBase+"global/override/.m.rule.is_user_mention", nil)
		cond := r.JSON["conditions"].([]any)[0].(map[string]any)
		if cond["value"] != alice.UserID || r.JSON["default"] != true || r.JSON["enabled"] != true {
			t.Errorf("is_user_mention: %s", r.Body)
		}
		r = alice.MustDo(200, "GET", rulesBase+"global/override/.m.rule.master", nil)
		if r.JSON["enabled"] != false || len(r.JSON["conditions"].([]any)) != 0 {
			t.Errorf("master: %s", r.Body)
		}
		// The global scope and one kind alone.
		if alice.MustDo(200, "GET", rulesBase+"global/", nil).JSON["underride"] == nil {
			t.Error("GET /pushrules/global/ lacks underride")
		}
		list := alice.MustDo(200, "GET", rulesBase+"global/underride/", nil)
		if len(list.Body) < 2 || list.Body[0] != '[' {
			t.Errorf("GET /pushrules/global/underride/: %s", list.Body)
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestPushRulesCRUD(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		put := func(kind, id, query string, body any) *testutil.Response {
			return alice.Do("PUT", rulesBase+"global/"+kind+"/"+url.PathEscape(id)+query, body)
		}
		// Content rules, the spec's cake examples.
		if r := put("content", "SSByZWFsbHkgbGlrZSBjYWtl", "", map[string]any{"pattern": "cake", "actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "cakealarm.wav"}}}); r.Status != 200 {
			t.Fatalf("PUT content rule: %d %s", r.Status, r.Body)
		}
		if r := put("content", "U3BvbmdlIGNha2UgaXMgYmVzdA", "?before=SSByZWFsbHkgbGlrZSBjYWtl", map[string]any{"pattern": "cake*lie", "actions": []any{"notify"}}); r.Status != 200 {
			t.Fatalf("PUT with before: %d %s", r.Status, r.Body)
		}
		got := alice.MustDo(200, "GET", rulesBase+"global/content/U3BvbmdlIGNha2UgaXMgYmVzdA", nil).JSON
		if got["pattern"] != "cake*lie" || got["default"] != false || got["enabled"] != true || got["conditions"] != nil {
			t.Errorf("GET rule: %v", got)
		}
		if ids := ruleIDs(t, alice, "content"); len(ids) < 2 || ids[0] != "U3BvbmdlIGNha2UgaXMgYmVzdA" || ids[1] != "SSByZWFsbHkgbGlrZSBjYWtl" {
			t.Errorf("content order %v", ids)
		}
		// after: the next less important rule; a new rule without
		// before/after goes first; an update keeps its place.
		put("content", "third", "?after=U3BvbmdlIGNha2UgaXMgYmVzdA", map[string]any{"pattern": "x", "actions": []any{}})
		put("content", "first", "", map[string]any{"pattern": "y", "actions": []any{}})
		put("content", "third", "", map[string]any{"pattern": "z", "actions": []any{"notify"}})
		ids := ruleIDs(t, alice, "content")
		want := []string{"first", "U3BvbmdlIGNha2UgaXMgYmVzdA", "third", "SSByZWFsbHkgbGlrZSBjYWtl", ".m.rule.contains_user_name"}
		if len(ids) != len(want) {
			t.Fatalf("content order %v, want %v", ids, want)
		}
		for i := range want {
			if ids[i] != want[i] {
				t.Fatalf("content order %v, want %v", ids, want)
			}
		}
		// Override rules with conditions (the spec's beer example), room
		// and sender rules.
		if r := put("override", "U2VlIHlvdSBpbiBUaGUgRHVrZQ", "", map[string]any{
			"conditions": []any{map[string]any{"kind": "event_match", "key": "content.body", "pattern": "beer"}, map[string]any{"kind": "room_member_count", "is": "<=10"}},
			"actions":    []any{"notify", map[string]any{"set_tweak": "sound", "value": "beeroclock.wav"}}}); r.Status != 200 {
			t.Fatalf("PUT override: %d %s", r.Status, r.Body)
		}
		if ov := ruleIDs(t, alice, "override"); ov[0] != ".m.rule.master" || ov[1] != "U2VlIHlvdSBpbiBUaGUgRHVrZQ" {
			t.Errorf("override order %v", ov)
		}
		put("room", "!dj234r78wl45Gh4D:matrix.org", "", map[string]any{"actions": []any{}})
		put("sender", "@spambot:matrix.org", "", map[string]any{"actions": []any{"dont_notify"}})
		// The historical dont_notify is kept as sent.
		r := alice.MustDo(200, "GET", rulesBase+"global/sender/"+url.PathEscape("@spambot:matrix.org")+"/actions", nil)
		if acts, _ := r.JSON["actions"].([]any); len(acts) != 1 || acts[0] != "dont_notify" {
			t.Errorf("sender actions: %s", r.Body)
		}
		// enabled and actions, on user rules and server-default rules.
		alice.MustDo(200, "PUT", rulesBase+"global/room/"+url.PathEscape("!dj234r78wl45Gh4D:matrix.org")+"/enabled", map[string]any{"enabled": false})
		if r := alice.MustDo(200, "GET", rulesBase+"global/room/"+url.PathEscape("!dj234r78wl45Gh4D:matrix.org")+"/enabled", nil); r.JSON["enabled"] != false {
			t.Errorf("enabled: %s", r.Body)
		}
		alice.MustDo(200, "PUT", rulesBase+"global/override/.m.rule.master/enabled", map[string]any{"enabled": true})
		alice.MustDo(200, "PUT", rulesBase+"global/underride/.m.rule.message/actions", map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "bing"}}})
		if r := alice.MustDo(200, "GET", rulesBase+"global/override/.m.rule.master", nil); r.JSON["enabled"] != true || r.JSON["default"] != true {
			t.Errorf("master after enabling: %s", r.Body)
		}
		if r := alice.MustDo(200, "GET", rulesBase+"global/underride/.m.rule.message/actions", nil); len(r.JSON["actions"].([]any)) != 2 {
			t.Errorf("message actions: %s", r.Body)
		}
		// Updating a rule keeps it disabled.
		put("room", "!dj234r78wl45Gh4D:matrix.org", "", map[string]any{"actions": []any{"notify"}})
		if r := alice.MustDo(200, "GET", rulesBase+"global/room/"+url.PathEscape("!dj234r78wl45Gh4D:matrix.org"), nil); r.JSON["enabled"] != false {
			t.Errorf("updated rule re-enabled: %s", r.Body)
		}
		// DELETE.
		alice.MustDo(200, "DELETE", rulesBase+"global/content/first", nil)
		alice.MustDo(404, "GET", rulesBase+"global/content/first", nil)
		if r := alice.Do("DELETE", rulesBase+"global/content/first", nil); r.Status != 404 || r.ErrCode() != "M_NOT_FOUND" {
			t.Errorf("DELETE unknown rule: %d %s", r.Status, r.Body)
		}
	})
}

func TestPushRulesErrors(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		alice.MustDo(200, "PUT", rulesBase+"global/override/mine", map[string]any{"actions": []any{"notify"}})
		notify := map[string]any{"actions": []any{"notify"}}
		for _, c := range []struct {
			name, method, path string
			body               any
			status             int
			errcode            string
		}{
			{"unknown rule", "GET", "global/override/not_a_rule_id", nil, 404, "M_NOT_FOUND"},
			{"rule of another kind", "GET", "global/content/.m.rule.master", nil, 404, "M_NOT_FOUND"},
			{"unknown scope", "GET", "device/override/mine", nil, 400, "M_INVALID_PARAM"},
			{"unknown kind", "GET", "global/not_a_template/", nil, 400, "M_INVALID_PARAM"},
			{"unknown attribute", "GET", "global/override/.m.rule.master/not_an_attr", nil, 400, "M_INVALID_PARAM"},
			{"unknown attribute put", "PUT", "global/override/.m.rule.master/not_an_attr", map[string]any{"enabled": true}, 400, "M_INVALID_PARAM"},
			{"enabled of unknown rule", "GET", "global/override/nope/enabled", nil, 404, "M_NOT_FOUND"},
			{"set enabled of unknown rule", "PUT", "global/override/nope/enabled", map[string]any{"enabled": true}, 404, "M_NOT_FOUND"},
			{"set actions of unknown rule", "PUT", "global/room/nope/actions", notify, 404, "M_NOT_FOUND"},
			{"enabled not a boolean", "PUT", "global/override/.m.rule.master/enabled", map[string]any{"enabled": "not a boolean"}, 400, "M_BAD_JSON"},
			{"enabled missing", "PUT", "global/override/.m.rule.master/enabled", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"actions not a list", "PUT", "global/override/.m.rule.master/actions", map[string]any{"actions": "notify"}, 400, "M_BAD_JSON"},
			{"server-default rule ID", "PUT", "global/override/.m.rule.master", notify, 400, "M_INVALID_PARAM"},
			{"dot rule ID", "PUT", "global/override/.mine", notify, 400, "M_INVALID_PARAM"},
			{"backslash in rule ID", "PUT", "global/room/" + url.PathEscape(`#fo\o:example.com`), notify, 400, "M_INVALID_PARAM"},
			{"slash in rule ID", "PUT", "global/room/a%2Fb", notify, 400, "M_INVALID_PARAM"},
			{"no actions", "PUT", "global/room/" + url.PathEscape("#my_room:example.com"), map[string]any{}, 400, "M_MISSING_PARAM"},
			{"invalid action", "PUT", "global/room/" + url.PathEscape("#my_room:example.com"), map[string]any{"actions": []any{"not_an_action"}}, 400, "M_INVALID_PARAM"},
			{"invalid tweak", "PUT", "global/room/r", map[string]any{"actions": []any{map[string]any{"value": 1}}}, 400, "M_INVALID_PARAM"},
			{"condition without kind", "PUT", "global/underride/my_id", map[string]any{"actions": []any{}, "conditions": []any{map[string]any{}}}, 400, "M_BAD_JSON"},
			{"conditions not a list", "PUT", "global/underride/my_id", map[string]any{"actions": []any{}, "conditions": "x"}, 400, "M_BAD_JSON"},
			{"content rule without pattern", "PUT", "global/content/my_id", map[string]any{"actions": []any{}}, 400, "M_MISSING_PARAM"},
			{"pattern not a string", "PUT", "global/content/my_id", map[string]any{"actions": []any{}, "pattern": 5}, 400, "M_BAD_JSON"},
			{"before an unknown rule", "PUT", "global/override/new?before=nope", notify, 400, "M_UNKNOWN"},
			{"after a server-default rule", "PUT", "global/override/new?after=.m.rule.master", notify, 400, "M_INVALID_PARAM"},
			{"not JSON", "PUT", "global/override/new", "{", 400, "M_NOT_JSON"},
			{"delete a server-default rule", "DELETE", "global/override/.m.rule.master", nil, 400, "M_INVALID_PARAM"},
			{"delete an unknown rule", "DELETE", "global/override/nope", nil, 404, "M_NOT_FOUND"},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := alice.Do(c.method, rulesBase+c.path, c.body)
				if r.Status != c.status || r.ErrCode() != c.errcode {
					t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, r.Status, r.Body, c.status, c.errcode)
				}
			})
		}
		// Nothing of the refused requests was stored.
		if ids := ruleIDs(t, alice, "override"); contains(ids, "new") || contains(ids, "my_id") {
			t.Errorf("refused rules stored: %v", ids)
		}
		// Push rules need an access token.
		srv.Client(t).MustDo(401, "GET", rulesBase, nil)
	})
}

func TestPushRulesInSync(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "pw")
		pushRules := func(resp map[string]any) map[string]any {
			evs, _ := dig(resp, "account_data", "events").([]any)
			for _, e := range evs {
				ev := e.(map[string]any)
				if ev["type"] == "m.push_rules" {
					return ev["content"].(map[string]any)
				}
			}
			return nil
		}
		// Initial sync carries the default rules.
		r := alice.MustDo(200, "GET", "/_matrix/client/v3/sync", nil)
		if pr := pushRules(r.JSON); pr == nil || dig(pr, "global", "override") == nil {
			t.Fatalf("initial sync lacks m.push_rules: %s", r.Body)
		}
		// A filter without account data leaves it out.
		f := url.QueryEscape(`{"account_data":{"not_types":["m.push_rules"]}}`)
		if pushRules(alice.MustDo(200, "GET", "/_matrix/client/v3/sync?filter="+f, nil).JSON) != nil {
			t.Error("m.push_rules despite the filter")
		}
		since := r.JSON["next_batch"].(string)
		// A change wakes an incremental sync, which carries the new rules.
		done := make(chan map[string]any, 1)
		go func() {
			done <- alice.MustDo(200, "GET", "/_matrix/client/v3/sync?timeout=10000&since="+url.QueryEscape(since), nil).JSON
		}()
		time.Sleep(100 * time.Millisecond)
		alice.MustDo(200, "PUT", rulesBase+"global/room/"+url.PathEscape("!foo:example.com"), map[string]any{"actions": []any{"notify"}})
		select {
		case resp := <-done:
			pr := pushRules(resp)
			rooms, _ := dig(pr, "global", "room").([]any)
			if len(rooms) != 1 || rooms[0].(map[string]any)["rule_id"] != "!foo:example.com" {
				t.Fatalf("incremental m.push_rules: %v", pr)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("sync not woken by the push rule change")
		}
		// The stored account data is readable too.
		ad := alice.MustDo(200, "GET", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.push_rules", nil)
		if dig(ad.JSON, "global", "room") == nil {
			t.Errorf("account data: %s", ad.Body)
		}
	})
}
