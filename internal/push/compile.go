package push

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
)

// This file compiles rules into matchers: glob patterns become literal
// comparisons or regular expressions once, property paths are split once,
// and actions are reduced to what evaluation needs.

// compiledRules is a user's ruleset ready for evaluation: disabled rules
// are left out, room and sender rules are indexed by their IDs.
type compiledRules struct {
	override  []*compiledRule
	content   []*compiledRule
	room      map[string]*compiledRule
	sender    map[string]*compiledRule
	underride []*compiledRule
}

// compiledRule is one enabled rule.
type compiledRule struct {
	id     string
	conds  []condition
	acts   *actions
	legacy bool
}

// actions is what a matching rule does.
type actions struct {
	notify    bool
	highlight bool
	raw       string                     // the actions as JSON, for /notifications
	tweaks    map[string]json.RawMessage // set_tweak actions, for the push gateway
}

// compileRuleset compiles a ruleset.
func compileRuleset(rs *Ruleset) *compiledRules {
	c := &compiledRules{room: map[string]*compiledRule{}, sender: map[string]*compiledRule{}}
	for _, kind := range kinds {
		for _, r := range rs.Kind(kind) {
			if !r.Enabled {
				continue
			}
			cr := &compiledRule{id: r.RuleID, acts: compileActions(r.Actions), legacy: r.Default && legacyRules[r.RuleID]}
			switch kind {
			case KindOverride, KindUnderride:
				cr.conds = compileConditions(r.Conditions)
			case KindContent:
				if r.Pattern == nil {
					continue
				}
				cr.conds = []condition{&eventMatch{path: []string{"content", "body"}, glob: compileGlob(*r.Pattern, true)}}
			}
			switch kind {
			case KindOverride:
				c.override = append(c.override, cr)
			case KindContent:
				c.content = append(c.content, cr)
			case KindRoom:
				c.room[r.RuleID] = cr
			case KindSender:
				c.sender[r.RuleID] = cr
			case KindUnderride:
				c.underride = append(c.underride, cr)
			}
		}
	}
	return c
}

// evaluate returns the actions of the first rule that matches the event for
// member m, or nil when none does.
func (c *compiledRules) evaluate(ev *evalEvent, m *memberView) *actions {
	if r := c.match(ev, m); r != nil {
		return r.acts
	}
	return nil
}

// match returns the first rule that matches the event for member m.
func (c *compiledRules) match(ev *evalEvent, m *memberView) *compiledRule {
	if r := firstMatch(c.override, ev, m); r != nil {
		return r
	}
	if ev.hasBody {
		if r := firstMatch(c.content, ev, m); r != nil {
			return r
		}
	}
	if r := c.room[ev.roomID]; r != nil {
		return r
	}
	if r := c.sender[ev.sender]; r != nil {
		return r
	}
	return firstMatch(c.underride, ev, m)
}

func firstMatch(rules []*compiledRule, ev *evalEvent, m *memberView) *compiledRule {
	for _, r := range rules {
		if r.legacy && ev.hasMentions {
			continue
		}
		if r.matches(ev, m) {
			return r
		}
	}
	return nil
}

func (r *compiledRule) matches(ev *evalEvent, m *memberView) bool {
	for _, c := range r.conds {
		if !c.match(ev, m) {
			return false
		}
	}
	return true
}

// compileActions reduces an actions array. The historical dont_notify and
// coalesce actions are ignored, as the spec requires.
func compileActions(raw json.RawMessage) *actions {
	a := &actions{raw: string(raw)}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return a
	}
	for _, item := range list {
		var s string
		if json.Unmarshal(item, &s) == nil {
			if s == "notify" {
				a.notify = true
			}
			continue
		}
		var tw struct {
			SetTweak *string         `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(item, &tw) != nil || tw.SetTweak == nil {
			continue
		}
		if *tw.SetTweak == "highlight" {
			// No value means true; any value but false highlights.
			a.highlight = tw.Value == nil || !bytes.Equal(bytes.TrimSpace(tw.Value), []byte("false"))
		}
		if a.tweaks == nil {
			a.tweaks = map[string]json.RawMessage{}
		}
		v := tw.Value
		if v == nil {
			v = json.RawMessage("true")
		}
		a.tweaks[*tw.SetTweak] = v
	}
	return a
}

// condition is one compiled condition.
type condition interface {
	match(ev *evalEvent, m *memberView) bool
}

// compileConditions compiles a conditions array. A condition that cannot
// be compiled (unknown kind, missing parameters) never matches, which
// disables its rule as the spec requires.
func compileConditions(raw json.RawMessage) []condition {
	var list []json.RawMessage
	if len(raw) > 0 && json.Unmarshal(raw, &list) != nil {
		return []condition{never{}}
	}
	out := make([]condition, 0, len(list))
	for _, item := range list {
		out = append(out, compileCondition(item))
	}
	return out
}

// conditionJSON is the wire form of a condition.
type conditionJSON struct {
	Kind    string          `json:"kind"`
	Key     *string         `json:"key"`
	Pattern *string         `json:"pattern"`
	Is      *string         `json:"is"`
	Value   json.RawMessage `json:"value"`
}

func compileCondition(raw json.RawMessage) condition {
	var c conditionJSON
	if json.Unmarshal(raw, &c) != nil {
		return never{}
	}
	switch c.Kind {
	case "event_match":
		if c.Key == nil || c.Pattern == nil {
			return never{}
		}
		path := splitPath(*c.Key)
		body := *c.Key == "content.body"
		return &eventMatch{path: path, glob: compileGlob(*c.Pattern, body)}
	case "event_property_is", "event_property_contains":
		if c.Key == nil || c.Value == nil {
			return never{}
		}
		v, ok := parseScalar(c.Value)
		if !ok {
			return never{}
		}
		if c.Kind == "event_property_is" {
			return &propertyIs{path: splitPath(*c.Key), value: v}
		}
		return &propertyContains{path: splitPath(*c.Key), value: v}
	case "contains_display_name":
		return displayNameMatch{}
	case "room_member_count":
		if c.Is == nil {
			return never{}
		}
		mc, ok := parseMemberCount(*c.Is)
		if !ok {
			return never{}
		}
		return mc
	case "sender_notification_permission":
		if c.Key == nil {
			return never{}
		}
		return senderPermission{key: *c.Key}
	}
	return never{}
}

// never is a condition that cannot match (unknown or malformed).
type never struct{}

func (never) match(*evalEvent, *memberView) bool { return false }

// eventMatch is the event_match condition.
type eventMatch struct {
	path []string
	glob *glob
}

func (c *eventMatch) match(ev *evalEvent, _ *memberView) bool {
	v, ok := ev.lookup(c.path)
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		return false
	}
	if c.glob.wordBoundary {
		// Only content.body is matched by words; it is lower-cased once
		// per event.
		return c.glob.matchWords(ev.lowerBody)
	}
	return c.glob.match(s)
}

// propertyIs is the event_property_is condition.
type propertyIs struct {
	path  []string
	value scalar
}

func (c *propertyIs) match(ev *evalEvent, _ *memberView) bool {
	v, ok := ev.lookup(c.path)
	return ok && c.value.equals(v)
}

// propertyContains is the event_property_contains condition.
type propertyContains struct {
	path  []string
	value scalar
}

func (c *propertyContains) match(ev *evalEvent, _ *memberView) bool {
	v, ok := ev.lookup(c.path)
	if !ok {
		return false
	}
	arr, ok := v.([]any)
	if !ok {
		return false
	}
	for _, item := range arr {
		if c.value.equals(item) {
			return true
		}
	}
	return false
}

// displayNameMatch is the (deprecated) contains_display_name condition:
// the body mentions the member's display name in the room as a word.
type displayNameMatch struct{}

func (displayNameMatch) match(ev *evalEvent, m *memberView) bool {
	if !ev.hasBody || m.lowerName == "" {
		return false
	}
	return containsWord(ev.lowerBody, m.lowerName)
}

// memberCount is the room_member_count condition.
type memberCount struct {
	op string
	n  int64
}

func parseMemberCount(is string) (memberCount, bool) {
	op := "=="
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	n, err := strconv.ParseInt(is, 10, 64)
	if err != nil {
		return memberCount{}, false
	}
	return memberCount{op: op, n: n}, true
}

func (c memberCount) match(_ *evalEvent, m *memberView) bool {
	count := int64(m.room.memberCount)
	switch c.op {
	case "<":
		return count < c.n
	case ">":
		return count > c.n
	case "<=":
		return count <= c.n
	case ">=":
		return count >= c.n
	}
	return count == c.n
}

// senderPermission is the sender_notification_permission condition.
type senderPermission struct{ key string }

func (c senderPermission) match(ev *evalEvent, m *memberView) bool {
	return m.room.senderLevel(ev.sender) >= m.room.notificationLevel(c.key)
}

// scalar is a non-compound canonical JSON value: a string, an integer in
// the canonical range, a boolean or null.
type scalar struct {
	kind byte // 's', 'i', 'b', 'n'
	s    string
	i    int64
	b    bool
}

// maxCanonicalInt bounds canonical JSON integers: [-(2**53)+1, (2**53)-1].
const maxCanonicalInt = 1<<53 - 1

// parseScalar parses a condition's value.
func parseScalar(raw json.RawMessage) (scalar, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return scalar{}, false
	}
	return scalarOf(v)
}

// scalarOf converts a decoded JSON value (numbers as json.Number).
func scalarOf(v any) (scalar, bool) {
	switch x := v.(type) {
	case nil:
		return scalar{kind: 'n'}, true
	case string:
		return scalar{kind: 's', s: x}, true
	case bool:
		return scalar{kind: 'b', b: x}, true
	case json.Number:
		i, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil || i > maxCanonicalInt || i < -maxCanonicalInt {
			return scalar{}, false
		}
		return scalar{kind: 'i', i: i}, true
	}
	return scalar{}, false
}

func (s scalar) equals(v any) bool {
	o, ok := scalarOf(v)
	if !ok || o.kind != s.kind {
		return false
	}
	switch s.kind {
	case 's':
		return o.s == s.s
	case 'i':
		return o.i == s.i
	case 'b':
		return o.b == s.b
	}
	return true
}

// splitPath splits a dot-separated property path: "\." is a literal dot,
// "\\" a literal backslash, and any other backslash is itself.
func splitPath(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// glob is a compiled glob pattern ("*" any run of characters, "?" one
// character), matched case-insensitively. A word-boundary glob (content
// rules and event_match on content.body) matches any substring that starts
// and ends at a word boundary.
type glob struct {
	wordBoundary bool
	literal      string // lower-cased pattern without wildcards, or ""
	isLiteral    bool
	re           *regexp.Regexp
}

func compileGlob(pattern string, wordBoundary bool) *glob {
	g := &glob{wordBoundary: wordBoundary}
	if !strings.ContainsAny(pattern, "*?") {
		g.isLiteral, g.literal = true, strings.ToLower(pattern)
		return g
	}
	var b strings.Builder
	b.WriteString(`(?is)`)
	if wordBoundary {
		b.WriteString(`(?:\A|[^A-Za-z0-9_])`)
	} else {
		b.WriteString(`\A`)
	}
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(`.*?`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if wordBoundary {
		b.WriteString(`(?:[^A-Za-z0-9_]|\z)`)
	} else {
		b.WriteString(`\z`)
	}
	g.re = regexp.MustCompile(b.String())
	return g
}

// match matches a whole value, of any case.
func (g *glob) match(s string) bool {
	if g.isLiteral {
		return strings.EqualFold(s, g.literal)
	}
	return g.re.MatchString(s)
}

// matchWords matches a word-boundary glob in a lower-cased value.
func (g *glob) matchWords(lower string) bool {
	if g.isLiteral {
		return containsWord(lower, g.literal)
	}
	return g.re.MatchString(lower)
}

// containsWord reports whether word occurs in s starting and ending at word
// boundaries (both already lower-cased).
func containsWord(s, word string) bool {
	if word == "" {
		// An empty pattern matches at any boundary: the start of s.
		return true
	}
	for from := 0; from <= len(s)-len(word); {
		i := strings.Index(s[from:], word)
		if i < 0 {
			return false
		}
		i += from
		end := i + len(word)
		if (i == 0 || !isWordByte(s[i-1])) && (end == len(s) || !isWordByte(s[end])) {
			return true
		}
		from = i + 1
	}
	return false
}

// isWordByte reports whether b is in [A-Za-z0-9_]. Bytes of multi-byte
// UTF-8 characters are not: those characters are boundaries.
func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}
