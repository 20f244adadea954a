package accounts

import (
	"encoding/json"
	"slices"
	"strings"
)

// Matching of events against filters. A nil filter matches everything.

// MatchType reports whether an event type matches a filter pattern, where
// "*" matches any sequence of characters.
func MatchType(pattern, typ string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == typ
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(typ, parts[0]) {
		return false
	}
	typ = typ[len(parts[0]):]
	for i, part := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(typ, part)
		}
		idx := strings.Index(typ, part)
		if idx < 0 {
			return false
		}
		typ = typ[idx+len(part):]
	}
	return true
}

func matchAnyType(patterns []string, typ string) bool {
	for _, p := range patterns {
		if MatchType(p, typ) {
			return true
		}
	}
	return false
}

// Allows reports whether an event of type typ from sender passes the
// filter's types, not_types, senders and not_senders. An empty sender skips
// the sender checks (for data that has none, like account data).
func (f *EventFilter) Allows(typ, sender string) bool {
	if f == nil {
		return true
	}
	if matchAnyType(f.NotTypes, typ) {
		return false
	}
	if f.Types != nil && !matchAnyType(f.Types, typ) {
		return false
	}
	if sender != "" {
		if slices.Contains(f.NotSenders, sender) {
			return false
		}
		if f.Senders != nil && !slices.Contains(f.Senders, sender) {
			return false
		}
	}
	return true
}

// AllowsEvent reports whether a room event passes the filter: the event
// filter's checks, rooms and not_rooms, and contains_url.
func (f *RoomEventFilter) AllowsEvent(roomID, typ, sender string, content []byte) bool {
	if f == nil {
		return true
	}
	if !f.EventFilter.Allows(typ, sender) || !allowsRoom(f.Rooms, f.NotRooms, roomID) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL json.RawMessage `json:"url"`
		}
		_ = json.Unmarshal(content, &c)
		if (len(c.URL) > 0) != *f.ContainsURL {
			return false
		}
	}
	return true
}

// LimitOr returns the filter's limit, or def when it sets none.
func (f *EventFilter) LimitOr(def int) int {
	if f == nil || f.Limit == nil {
		return def
	}
	return *f.Limit
}

// AllowsRoom reports whether the room filter includes roomID.
func (f *RoomFilter) AllowsRoom(roomID string) bool {
	if f == nil {
		return true
	}
	return allowsRoom(f.Rooms, f.NotRooms, roomID)
}

func allowsRoom(rooms, notRooms []string, roomID string) bool {
	if slices.Contains(notRooms, roomID) {
		return false
	}
	return rooms == nil || slices.Contains(rooms, roomID)
}
