// Package push implements the push notifications module of the
// client-server API: push rules and their evaluation, unread notification
// counts, GET /notifications, pushers and delivery to push gateways.
//
// Evaluation is off the send path. The room engine's NewEvents hook only
// wakes the evaluator (evaluator.go), which reads the events after its
// durable position in the database, evaluates every local member's compiled
// rules, and in one transaction writes the notifying events
// (push_notifications), bumps the per-user, per-room, per-thread counters
// (push_counts) and advances its position. Read receipts lower the counters
// inside the transaction that stores them (counts.go). Pushers
// (pushers.go) deliver the notifying events to push gateways from their own
// durable positions (gateway.go).
package push

import (
	"encoding/json"
	"strings"
)

// Rule kinds, in the order they are evaluated.
const (
	KindOverride  = "override"
	KindContent   = "content"
	KindRoom      = "room"
	KindSender    = "sender"
	KindUnderride = "underride"
)

// kinds lists the rule kinds in evaluation order.
var kinds = []string{KindOverride, KindContent, KindRoom, KindSender, KindUnderride}

// validKind reports whether k is a rule kind.
func validKind(k string) bool {
	for _, x := range kinds {
		if x == k {
			return true
		}
	}
	return false
}

// Rule is a push rule as the client-server API shows it. Conditions and
// actions are kept as the JSON the client sent, so that unknown condition
// kinds and tweaks survive a round trip.
type Rule struct {
	RuleID     string          `json:"rule_id"`
	Default    bool            `json:"default"`
	Enabled    bool            `json:"enabled"`
	Conditions json.RawMessage `json:"conditions,omitempty"`
	Pattern    *string         `json:"pattern,omitempty"`
	Actions    json.RawMessage `json:"actions"`
}

// Ruleset is a user's global ruleset, each kind in priority order.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// Kind returns the rules of one kind.
func (rs *Ruleset) Kind(kind string) []Rule {
	switch kind {
	case KindOverride:
		return rs.Override
	case KindContent:
		return rs.Content
	case KindRoom:
		return rs.Room
	case KindSender:
		return rs.Sender
	case KindUnderride:
		return rs.Underride
	}
	return nil
}

// Find returns the rule of a kind with the given ID, or nil.
func (rs *Ruleset) Find(kind, ruleID string) *Rule {
	list := rs.Kind(kind)
	for i := range list {
		if list[i].RuleID == ruleID {
			return &list[i]
		}
	}
	return nil
}

// defaultRule is a server-default rule. "$USER" and "$LOCALPART" in its
// conditions and pattern stand for the rule owner's user ID and localpart.
type defaultRule struct {
	kind       string
	id         string
	conditions string // JSON array (override and underride rules)
	pattern    string // content rules
	actions    string // JSON array
	disabled   bool
	// legacy rules look for mentions in the body. The spec dropped them in
	// v1.17; they are kept for clients that send no m.mentions (Complement
	// and Synapse still expect them) and are skipped for events that carry
	// m.mentions, as MSC3952 specified.
	legacy bool
}

const (
	actNotify        = `["notify"]`
	actNotifySound   = `["notify",{"set_tweak":"sound","value":"default"}]`
	actHighlight     = `["notify",{"set_tweak":"highlight"}]`
	actHighlightSnd  = `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]`
	actNone          = `[]`
	ruleMaster       = ".m.rule.master"
	placeholderUser  = "$USER"
	placeholderLocal = "$LOCALPART"
)

// defaultRules are the server-default rules of the current spec, in
// priority order within each kind. .m.rule.master comes first and is placed
// before the user's override rules; the other defaults come after the
// user's rules of their kind.
var defaultRules = []defaultRule{
	{kind: KindOverride, id: ruleMaster, conditions: `[]`, actions: actNone, disabled: true},
	{kind: KindOverride, id: ".m.rule.suppress_notices", conditions: `[{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}]`, actions: actNone},
	{kind: KindOverride, id: ".m.rule.invite_for_me", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.member"},{"kind":"event_match","key":"content.membership","pattern":"invite"},{"kind":"event_match","key":"state_key","pattern":"$USER"}]`, actions: actNotifySound},
	{kind: KindOverride, id: ".m.rule.member_event", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.member"}]`, actions: actNone},
	{kind: KindOverride, id: ".m.rule.is_user_mention", conditions: `[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"$USER"}]`, actions: actHighlightSnd},
	{kind: KindOverride, id: ".m.rule.contains_display_name", conditions: `[{"kind":"contains_display_name"}]`, actions: actHighlightSnd, legacy: true},
	{kind: KindOverride, id: ".m.rule.is_room_mention", conditions: `[{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true},{"kind":"sender_notification_permission","key":"room"}]`, actions: actHighlight},
	{kind: KindOverride, id: ".m.rule.roomnotif", conditions: `[{"kind":"event_match","key":"content.body","pattern":"@room"},{"kind":"sender_notification_permission","key":"room"}]`, actions: actHighlight, legacy: true},
	{kind: KindOverride, id: ".m.rule.tombstone", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.tombstone"},{"kind":"event_match","key":"state_key","pattern":""}]`, actions: actHighlight},
	{kind: KindOverride, id: ".m.rule.reaction", conditions: `[{"kind":"event_match","key":"type","pattern":"m.reaction"}]`, actions: actNone},
	{kind: KindOverride, id: ".m.rule.room.server_acl", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}]`, actions: actNone},
	{kind: KindOverride, id: ".m.rule.suppress_edits", conditions: `[{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}]`, actions: actNone},
	{kind: KindContent, id: ".m.rule.contains_user_name", pattern: placeholderLocal, actions: actHighlightSnd, legacy: true},
	{kind: KindUnderride, id: ".m.rule.call", conditions: `[{"kind":"event_match","key":"type","pattern":"m.call.invite"}]`, actions: `["notify",{"set_tweak":"sound","value":"ring"}]`},
	{kind: KindUnderride, id: ".m.rule.encrypted_room_one_to_one", conditions: `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}]`, actions: actNotifySound},
	{kind: KindUnderride, id: ".m.rule.room_one_to_one", conditions: `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.message"}]`, actions: actNotifySound},
	{kind: KindUnderride, id: ".m.rule.message", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.message"}]`, actions: actNotify},
	{kind: KindUnderride, id: ".m.rule.encrypted", conditions: `[{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}]`, actions: actNotify},
}

// defaultByID indexes defaultRules by rule ID.
var defaultByID = func() map[string]*defaultRule {
	m := make(map[string]*defaultRule, len(defaultRules))
	for i := range defaultRules {
		m[defaultRules[i].id] = &defaultRules[i]
	}
	return m
}()

// legacyRules are the IDs of the legacy body-mention rules.
var legacyRules = func() map[string]bool {
	m := map[string]bool{}
	for _, d := range defaultRules {
		if d.legacy {
			m[d.id] = true
		}
	}
	return m
}()

// isDefaultID reports whether ruleID names a server-default rule of kind.
func isDefaultID(kind, ruleID string) bool {
	d := defaultByID[ruleID]
	return d != nil && d.kind == kind
}

// userRule is a user-defined rule as stored.
type userRule struct {
	Kind       string
	RuleID     string
	Conditions json.RawMessage
	Pattern    *string
	Actions    json.RawMessage
	Enabled    bool
}

// defaultChange is a user's change to a server-default rule: nil fields
// keep the default.
type defaultChange struct {
	Enabled *bool
	Actions json.RawMessage
}

// buildRuleset assembles a user's ruleset: the server-default rules with
// the user's changes, and the user's own rules (each kind's list in
// priority order) in their places.
func buildRuleset(userID string, own []userRule, changes map[string]defaultChange) *Ruleset {
	rs := &Ruleset{Override: []Rule{}, Content: []Rule{}, Room: []Rule{}, Sender: []Rule{}, Underride: []Rule{}}
	add := func(kind string, r Rule) {
		switch kind {
		case KindOverride:
			rs.Override = append(rs.Override, r)
		case KindContent:
			rs.Content = append(rs.Content, r)
		case KindRoom:
			rs.Room = append(rs.Room, r)
		case KindSender:
			rs.Sender = append(rs.Sender, r)
		case KindUnderride:
			rs.Underride = append(rs.Underride, r)
		}
	}
	addDefault := func(d *defaultRule) {
		r := d.render(userID)
		if c, ok := changes[d.id]; ok {
			if c.Enabled != nil {
				r.Enabled = *c.Enabled
			}
			if c.Actions != nil {
				r.Actions = c.Actions
			}
		}
		add(d.kind, r)
	}
	// .m.rule.master outranks every other rule, the user's included.
	addDefault(defaultByID[ruleMaster])
	for _, kind := range kinds {
		for _, u := range own {
			if u.Kind != kind {
				continue
			}
			r := Rule{RuleID: u.RuleID, Enabled: u.Enabled, Pattern: u.Pattern, Actions: u.Actions}
			if kind == KindOverride || kind == KindUnderride {
				r.Conditions = u.Conditions
				if r.Conditions == nil {
					r.Conditions = json.RawMessage(`[]`)
				}
			}
			add(kind, r)
		}
		for i := range defaultRules {
			if d := &defaultRules[i]; d.kind == kind && d.id != ruleMaster {
				addDefault(d)
			}
		}
	}
	return rs
}

// render turns a server-default rule into the owner's Rule.
func (d *defaultRule) render(userID string) Rule {
	r := Rule{RuleID: d.id, Default: true, Enabled: !d.disabled, Actions: json.RawMessage(d.actions)}
	if d.kind == KindOverride || d.kind == KindUnderride {
		r.Conditions = json.RawMessage(substitute(d.conditions, userID))
	}
	if d.kind == KindContent {
		p := substitute(d.pattern, userID)
		r.Pattern = &p
	}
	return r
}

// substitute replaces the owner placeholders of a default rule. User IDs
// hold no characters that JSON escapes, but they are escaped anyway.
func substitute(s, userID string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	esc := func(v string) string {
		b, _ := json.Marshal(v)
		return string(b[1 : len(b)-1])
	}
	local := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(local, ':'); i >= 0 {
		local = local[:i]
	}
	s = strings.ReplaceAll(s, placeholderUser, esc(userID))
	return strings.ReplaceAll(s, placeholderLocal, esc(local))
}
