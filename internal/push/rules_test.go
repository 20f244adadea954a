package push

import (
	"encoding/json"
	"testing"
)

// These tests evaluate the server-default rules and every condition kind
// against the examples of the spec's push module.

const (
	alice  = "@alice:example.org"
	sender = "@example:example.org"
	roomID = "!636q39766251:example.com"
)

// testRoom is a room with the given number of joined members where alice
// is "Alice Liddell" and sender has power level senderLevel.
func testRoom(members int, senderLevel int64) *roomCtx {
	rc := &roomCtx{memberCount: members, lowerNames: map[string]string{alice: "alice liddell"}, creators: map[string]bool{}}
	rc.levels.Defaults()
	rc.levels.Users = map[string]int64{sender: senderLevel}
	return rc
}

// event builds an evalEvent of sender in roomID.
func event(typ string, stateKey *string, content string) *evalEvent {
	return newEvalEvent(roomID, "$ev", typ, sender, stateKey, 1432735824653, []byte(content))
}

func strp(s string) *string { return &s }

// matchedRule evaluates alice's default rules (with changes applied) and
// returns the matching rule's ID and actions.
func matchedRule(t *testing.T, rs *Ruleset, ev *evalEvent, rc *roomCtx) (string, *actions) {
	t.Helper()
	r := compileRuleset(rs).match(ev, rc.view(alice))
	if r == nil {
		return "", nil
	}
	return r.id, r.acts
}

func TestDefaultRules(t *testing.T) {
	group := testRoom(10, 0)
	admin := testRoom(10, 100)
	oneToOne := testRoom(2, 0)
	cases := []struct {
		name      string
		ev        *evalEvent
		rc        *roomCtx
		rule      string
		notify    bool
		highlight bool
		sound     string
	}{
		{"plain message", event("m.room.message", nil, `{"msgtype":"m.text","body":"hello"}`), group, ".m.rule.message", true, false, ""},
		{"notice", event("m.room.message", nil, `{"msgtype":"m.notice","body":"beep"}`), group, ".m.rule.suppress_notices", false, false, ""},
		{"invite for me", event("m.room.member", strp(alice), `{"membership":"invite"}`), group, ".m.rule.invite_for_me", true, false, "default"},
		{"invite for another", event("m.room.member", strp("@bob:example.org"), `{"membership":"invite"}`), group, ".m.rule.member_event", false, false, ""},
		{"join", event("m.room.member", strp(sender), `{"membership":"join"}`), group, ".m.rule.member_event", false, false, ""},
		{"user mention", event("m.room.message", nil, `{"body":"hi","m.mentions":{"user_ids":["@alice:example.org"]}}`), group, ".m.rule.is_user_mention", true, true, "default"},
		{"mention of another", event("m.room.message", nil, `{"body":"hi","m.mentions":{"user_ids":["@bob:example.org"]}}`), group, ".m.rule.message", true, false, ""},
		{"display name (legacy)", event("m.room.message", nil, `{"body":"Hello Alice Liddell!"}`), group, ".m.rule.contains_display_name", true, true, "default"},
		{"display name with m.mentions", event("m.room.message", nil, `{"body":"Hello Alice Liddell!","m.mentions":{}}`), group, ".m.rule.message", true, false, ""},
		{"room mention", event("m.room.message", nil, `{"body":"all","m.mentions":{"room":true}}`), admin, ".m.rule.is_room_mention", true, true, ""},
		{"room mention without power", event("m.room.message", nil, `{"body":"all","m.mentions":{"room":true}}`), group, ".m.rule.message", true, false, ""},
		{"@room (legacy)", event("m.room.message", nil, `{"body":"@room: lunch"}`), admin, ".m.rule.roomnotif", true, true, ""},
		{"user name (legacy)", event("m.room.message", nil, `{"body":"ping @alice:example.org"}`), group, ".m.rule.contains_user_name", true, true, "default"},
		{"user name inside a word", event("m.room.message", nil, `{"body":"malice"}`), group, ".m.rule.message", true, false, ""},
		{"tombstone", event("m.room.tombstone", strp(""), `{"body":"moved","replacement_room":"!new:example.org"}`), group, ".m.rule.tombstone", true, true, ""},
		{"tombstone with a state key", event("m.room.tombstone", strp("x"), `{}`), group, "", false, false, ""},
		{"reaction", event("m.reaction", nil, `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$x","key":"👍"}}`), group, ".m.rule.reaction", false, false, ""},
		{"server ACL", event("m.room.server_acl", strp(""), `{"allow":["*"]}`), group, ".m.rule.room.server_acl", false, false, ""},
		{"edit", event("m.room.message", nil, `{"body":"* fixed","m.new_content":{"body":"fixed"},"m.relates_to":{"rel_type":"m.replace","event_id":"$x"}}`), group, ".m.rule.suppress_edits", false, false, ""},
		{"call", event("m.call.invite", nil, `{"call_id":"1"}`), group, ".m.rule.call", true, false, "ring"},
		{"encrypted 1:1", event("m.room.encrypted", nil, `{"algorithm":"m.megolm.v1.aes-sha2"}`), oneToOne, ".m.rule.encrypted_room_one_to_one", true, false, "default"},
		{"message 1:1", event("m.room.message", nil, `{"body":"hi"}`), oneToOne, ".m.rule.room_one_to_one", true, false, "default"},
		{"encrypted group", event("m.room.encrypted", nil, `{"algorithm":"m.megolm.v1.aes-sha2"}`), group, ".m.rule.encrypted", true, false, ""},
		{"other event", event("m.room.topic", strp(""), `{"topic":"x"}`), group, "", false, false, ""},
	}
	rs := buildRuleset(alice, nil, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, acts := matchedRule(t, rs, c.ev, c.rc)
			if id != c.rule {
				t.Fatalf("rule %q, want %q", id, c.rule)
			}
			if acts == nil {
				return
			}
			if acts.notify != c.notify || acts.highlight != c.highlight {
				t.Errorf("notify %v highlight %v, want %v %v", acts.notify, acts.highlight, c.notify, c.highlight)
			}
			var sound string
			_ = json.Unmarshal(acts.tweaks["sound"], &sound)
			if sound != c.sound {
				t.Errorf("sound %q, want %q", sound, c.sound)
			}
		})
	}
}

func TestMasterRuleSilencesEverything(t *testing.T) {
	on := true
	rs := buildRuleset(alice, []userRule{{Kind: KindOverride, RuleID: "mine", Conditions: json.RawMessage(`[]`), Actions: json.RawMessage(actNotify), Enabled: true}},
		map[string]defaultChange{ruleMaster: {Enabled: &on}})
	if rs.Override[0].RuleID != ruleMaster || rs.Override[1].RuleID != "mine" {
		t.Fatalf("override order: %s, %s", rs.Override[0].RuleID, rs.Override[1].RuleID)
	}
	id, acts := matchedRule(t, rs, event("m.room.message", nil, `{"body":"hi","m.mentions":{"user_ids":["@alice:example.org"]}}`), testRoom(3, 0))
	if id != ruleMaster || acts.notify {
		t.Fatalf("matched %s (notify %v), want the master rule", id, acts != nil && acts.notify)
	}
}

func TestRulePrecedence(t *testing.T) {
	off := false
	own := []userRule{
		{Kind: KindContent, RuleID: "cake", Pattern: strp("cake*lie"), Actions: json.RawMessage(`["notify",{"set_tweak":"sound","value":"cakealarm.wav"}]`), Enabled: true},
		{Kind: KindRoom, RuleID: roomID, Actions: json.RawMessage(`[]`), Enabled: true},
		{Kind: KindSender, RuleID: "@spambot:example.org", Actions: json.RawMessage(`["dont_notify"]`), Enabled: true},
		{Kind: KindUnderride, RuleID: "disabled", Conditions: json.RawMessage(`[]`), Actions: json.RawMessage(actNotify), Enabled: false},
	}
	rs := buildRuleset(alice, own, map[string]defaultChange{".m.rule.suppress_notices": {Enabled: &off}})
	rc := testRoom(10, 0)
	// Content rules come before room rules.
	if id, acts := matchedRule(t, rs, event("m.room.message", nil, `{"body":"The cake is a lie"}`), rc); id != "cake" || !acts.notify {
		t.Errorf("cake*lie matched %q", id)
	}
	// The room rule mutes everything else in the room, notices included
	// now that suppress_notices is disabled.
	if id, acts := matchedRule(t, rs, event("m.room.message", nil, `{"msgtype":"m.notice","body":"x"}`), rc); id != roomID || acts.notify {
		t.Errorf("notice matched %q", id)
	}
	// Elsewhere, the sender rule's historical dont_notify means no
	// notification; the disabled underride never matches.
	other := newEvalEvent("!other:example.org", "$e", "m.room.message", "@spambot:example.org", nil, 1, []byte(`{"body":"buy"}`))
	if id, acts := matchedRule(t, rs, other, rc); id != "@spambot:example.org" || acts.notify {
		t.Errorf("spam matched %q", id)
	}
	quiet := newEvalEvent("!other:example.org", "$e", "m.custom", sender, nil, 1, []byte(`{}`))
	if id, _ := matchedRule(t, rs, quiet, rc); id != "" {
		t.Errorf("disabled rule matched: %q", id)
	}
}

// condMatches compiles one condition and matches it against an event for
// alice in rc.
func condMatches(cond string, ev *evalEvent, rc *roomCtx) bool {
	return compileCondition(json.RawMessage(cond)).match(ev, rc.view(alice))
}

func TestEventMatch(t *testing.T) {
	rc := testRoom(3, 0)
	topic := func(v string) *evalEvent {
		return event("m.room.topic", strp(""), `{"topic":`+v+`}`)
	}
	cond := `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`
	for v, want := range map[string]bool{`"Lunch plans"`: true, `"LUNCH"`: true, `" lunch"`: false, `"lunc"`: false, `null`: false} {
		if got := condMatches(cond, topic(v), rc); got != want {
			t.Errorf("topic %s: %v, want %v", v, got, want)
		}
	}
	body := `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`
	for v, want := range map[string]bool{"An example event.": true, "exple": true, "An exciting triple-whammy": true, "examples": false, "index example": true} {
		ev := event("m.room.message", nil, `{"body":"`+v+`"}`)
		if got := condMatches(body, ev, rc); got != want {
			t.Errorf("body %q: %v, want %v", v, got, want)
		}
	}
	// A missing or non-string property never matches, even "*".
	if condMatches(`{"kind":"event_match","key":"content.nope","pattern":"*"}`, topic(`"x"`), rc) {
		t.Error("* matched a missing property")
	}
	if condMatches(`{"kind":"event_match","key":"content.topic","pattern":"*"}`, topic(`5`), rc) {
		t.Error("* matched a number")
	}
	// Escaped dots name keys that contain dots.
	ev := event("m.room.message", nil, `{"m.relates_to":{"rel_type":"m.thread"}}`)
	if !condMatches(`{"kind":"event_match","key":"content.m\\.relates_to.rel_type","pattern":"m.thread"}`, ev, rc) {
		t.Error("escaped path did not match")
	}
	if !condMatches(`{"kind":"event_match","key":"type","pattern":"M.ROOM.*"}`, ev, rc) {
		t.Error("type glob did not match case-insensitively")
	}
	if !condMatches(`{"kind":"event_match","key":"room_id","pattern":"!636q39766251:example.com"}`, ev, rc) {
		t.Error("room_id did not match")
	}
}

func TestSplitPath(t *testing.T) {
	for key, want := range map[string][]string{
		`content.body`:             {"content", "body"},
		`content.m\.relates_to`:    {"content", "m.relates_to"},
		`content.m\\foo`:           {"content", `m\foo`},
		`content.a\xb`:             {"content", `a\xb`},
		`content.m\.mentions.room`: {"content", "m.mentions", "room"},
	} {
		got := splitPath(key)
		if len(got) != len(want) {
			t.Errorf("%s: %q, want %q", key, got, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: %q, want %q", key, got, want)
			}
		}
	}
}

func TestEventPropertyIs(t *testing.T) {
	rc := testRoom(3, 0)
	create := func(federate string) *evalEvent {
		return event("m.room.create", strp(""), `{"creator":"@example:example.org","m.federate":`+federate+`,"predecessor":{"event_id":"$something:example.org","room_id":"!oldroom:example.org"},"room_version":"1"}`)
	}
	cond := `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`
	for v, want := range map[string]bool{`true`: true, `"true"`: false, `1`: false, `false`: false} {
		if got := condMatches(cond, create(v), rc); got != want {
			t.Errorf("m.federate %s: %v, want %v", v, got, want)
		}
	}
	ev := event("m.room.message", nil, `{"n":42,"f":4.2,"s":"x","z":null,"o":{}}`)
	for c, want := range map[string]bool{
		`{"kind":"event_property_is","key":"content.n","value":42}`:         true,
		`{"kind":"event_property_is","key":"content.n","value":"42"}`:       false,
		`{"kind":"event_property_is","key":"content.f","value":4}`:          false,
		`{"kind":"event_property_is","key":"content.s","value":"x"}`:        true,
		`{"kind":"event_property_is","key":"content.s","value":"X"}`:        false,
		`{"kind":"event_property_is","key":"content.z","value":null}`:       true,
		`{"kind":"event_property_is","key":"content.missing","value":null}`: false,
		`{"kind":"event_property_is","key":"content.o","value":null}`:       false,
		`{"kind":"event_property_is","key":"content.n","value":{}}`:         false,
	} {
		if got := condMatches(c, ev, rc); got != want {
			t.Errorf("%s: %v, want %v", c, got, want)
		}
	}
}

func TestEventPropertyContains(t *testing.T) {
	rc := testRoom(3, 0)
	ev := event("m.room.canonical_alias", strp(""), `{"alias":"#somewhere:localhost","alt_aliases":["#somewhere:example.org","#myroom:example.com"],"nums":[1,{"x":1},null]}`)
	for c, want := range map[string]bool{
		`{"kind":"event_property_contains","key":"content.alt_aliases","value":"#myroom:example.com"}`: true,
		`{"kind":"event_property_contains","key":"content.alt_aliases","value":":example.com"}`:        false,
		`{"kind":"event_property_contains","key":"content.alias","value":"#somewhere:localhost"}`:      false,
		`{"kind":"event_property_contains","key":"content.nums","value":1}`:                            true,
		`{"kind":"event_property_contains","key":"content.nums","value":null}`:                         true,
		`{"kind":"event_property_contains","key":"content.missing","value":1}`:                         false,
	} {
		if got := condMatches(c, ev, rc); got != want {
			t.Errorf("%s: %v, want %v", c, got, want)
		}
	}
}

func TestContainsDisplayName(t *testing.T) {
	rc := testRoom(3, 0)
	cond := `{"kind":"contains_display_name"}`
	for body, want := range map[string]bool{"alice liddell, hi": true, "Hi Alice Liddell": true, "Alice": false, "xAlice Liddell": false} {
		if got := condMatches(cond, event("m.room.message", nil, `{"body":"`+body+`"}`), rc); got != want {
			t.Errorf("body %q: %v, want %v", body, got, want)
		}
	}
	// No display name in the room: never.
	if compileCondition(json.RawMessage(cond)).match(event("m.room.message", nil, `{"body":"anything"}`), rc.view("@bob:example.org")) {
		t.Error("matched without a display name")
	}
}

func TestRoomMemberCount(t *testing.T) {
	ev := event("m.room.message", nil, `{"body":"x"}`)
	for _, c := range []struct {
		is      string
		members int
		want    bool
	}{
		{"2", 2, true}, {"2", 3, false}, {"==2", 2, true}, {"<3", 2, true}, {"<3", 3, false},
		{">1", 2, true}, {">=2", 2, true}, {">=2", 1, false}, {"<=10", 10, true}, {"<=10", 11, false}, {"abc", 2, false}, {"", 0, false},
	} {
		cond := `{"kind":"room_member_count","is":"` + c.is + `"}`
		if got := condMatches(cond, ev, testRoom(c.members, 0)); got != c.want {
			t.Errorf("is %q with %d members: %v, want %v", c.is, c.members, got, c.want)
		}
	}
}

func TestSenderNotificationPermission(t *testing.T) {
	ev := event("m.room.message", nil, `{"body":"x"}`)
	cond := `{"kind":"sender_notification_permission","key":"room"}`
	if condMatches(cond, ev, testRoom(3, 49)) || !condMatches(cond, ev, testRoom(3, 50)) {
		t.Error("room notifications need power level 50 by default")
	}
	rc := testRoom(3, 10)
	rc.levels.Notifications = map[string]int64{"room": 10, "custom": 20}
	if !condMatches(cond, ev, rc) || condMatches(`{"kind":"sender_notification_permission","key":"custom"}`, ev, rc) {
		t.Error("notification levels from the power levels were not used")
	}
	// Privileged creators (room version 12) outrank any level.
	rc = testRoom(3, 0)
	rc.creators[sender] = true
	if !condMatches(cond, ev, rc) {
		t.Error("a creator may notify the room")
	}
}

func TestUnknownConditionsNeverMatch(t *testing.T) {
	ev := event("m.room.message", nil, `{"body":"x"}`)
	rc := testRoom(3, 0)
	for _, c := range []string{`{"kind":"org.example.custom"}`, `{"kind":"event_match","key":"type"}`, `{"kind":"event_property_is","key":"type"}`, `{"kind":"room_member_count"}`, `{"kind":"sender_notification_permission"}`, `"junk"`} {
		if condMatches(c, ev, rc) {
			t.Errorf("%s matched", c)
		}
	}
}

func TestActions(t *testing.T) {
	for raw, want := range map[string][2]bool{
		`["notify"]`:                           {true, false},
		`["dont_notify"]`:                      {false, false},
		`["coalesce","notify"]`:                {true, false},
		`["notify",{"set_tweak":"highlight"}]`: {true, true},
		`["notify",{"set_tweak":"highlight","value":false}]`: {true, false},
		`[]`: {false, false},
	} {
		a := compileActions(json.RawMessage(raw))
		if a.notify != want[0] || a.highlight != want[1] {
			t.Errorf("%s: notify %v highlight %v, want %v", raw, a.notify, a.highlight, want)
		}
	}
}
