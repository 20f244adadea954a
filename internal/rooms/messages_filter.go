package rooms

import (
	"encoding/json"
	"strings"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/httpx"
)

// eventFilter is a RoomEventFilter (the filter query parameter of
// /messages and /context) ready to match events.
type eventFilter struct {
	accounts.RoomEventFilter
}

// parseEventFilter decodes the filter query parameter; "" is the empty
// filter. Validation is accounts.ParseFilter's (the filter is checked as
// the timeline section of a Filter): M_BAD_JSON for a filter that does not
// follow the schema, M_INVALID_PARAM for one that is not JSON.
func parseEventFilter(raw string) (*eventFilter, error) {
	if raw == "" {
		return &eventFilter{}, nil
	}
	if !json.Valid([]byte(raw)) {
		return nil, httpx.InvalidParam("filter is not valid JSON")
	}
	f, err := accounts.ParseFilter([]byte(`{"room":{"timeline":` + raw + `}}`))
	if err != nil {
		return nil, err
	}
	if f.Room == nil || f.Room.Timeline == nil {
		return nil, httpx.BadJSON("filter must be a JSON object")
	}
	return &eventFilter{*f.Room.Timeline}, nil
}

// matches reports whether ev passes the filter.
func (f *eventFilter) matches(ev *Event) bool {
	typ, sender, room := ev.Type(), string(ev.SenderID()), ev.RoomID().String()
	if f.Types != nil && !matchesAny(f.Types, typ, true) {
		return false
	}
	if matchesAny(f.NotTypes, typ, true) {
		return false
	}
	if f.Senders != nil && !matchesAny(f.Senders, sender, false) {
		return false
	}
	if matchesAny(f.NotSenders, sender, false) {
		return false
	}
	if f.Rooms != nil && !matchesAny(f.Rooms, room, false) {
		return false
	}
	if matchesAny(f.NotRooms, room, false) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL any `json:"url"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		_, hasURL := c.URL.(string)
		if hasURL != *f.ContainsURL {
			return false
		}
	}
	return true
}

// matchesAny reports whether s is in list; with glob, entries may use "*"
// for any sequence of characters (event type patterns).
func matchesAny(list []string, s string, glob bool) bool {
	for _, p := range list {
		if p == s || (glob && typeGlobMatch(p, s)) {
			return true
		}
	}
	return false
}

// typeGlobMatch matches s against pattern p, where "*" matches any sequence of
// characters and every other character matches itself.
func typeGlobMatch(p, s string) bool {
	parts := strings.Split(p, "*")
	if len(parts) == 1 {
		return p == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}
