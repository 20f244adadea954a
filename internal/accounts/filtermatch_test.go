package accounts

import "testing"

func TestMatchType(t *testing.T) {
	cases := []struct {
		pattern, typ string
		want         bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.messages", false},
		{"m.room.*", "m.room.message", true},
		{"m.room.*", "m.roomx", false},
		{"*", "anything", true},
		{"m.*.member", "m.room.member", true},
		{"m.*.member", "m.room.members", false},
		{"*.member", "m.room.member", true},
		{"m.*a*e", "m.room.name", true},
	}
	for _, c := range cases {
		if got := MatchType(c.pattern, c.typ); got != c.want {
			t.Errorf("MatchType(%q, %q) = %v", c.pattern, c.typ, got)
		}
	}
}

func TestFilterAllows(t *testing.T) {
	var nilFilter *RoomEventFilter
	if !nilFilter.AllowsEvent("!r:x", "m.room.message", "@a:x", nil) {
		t.Fatal("nil filter must allow")
	}
	yes, no := true, false
	f := &RoomEventFilter{EventFilter: EventFilter{Types: []string{"m.room.*"}, NotTypes: []string{"m.room.member"}, NotSenders: []string{"@spam:x"}}, NotRooms: []string{"!no:x"}}
	checks := []struct {
		room, typ, sender string
		content           string
		want              bool
	}{
		{"!r:x", "m.room.message", "@a:x", `{}`, true},
		{"!r:x", "m.room.member", "@a:x", `{}`, false},
		{"!r:x", "m.reaction", "@a:x", `{}`, false},
		{"!r:x", "m.room.message", "@spam:x", `{}`, false},
		{"!no:x", "m.room.message", "@a:x", `{}`, false},
	}
	for _, c := range checks {
		if got := f.AllowsEvent(c.room, c.typ, c.sender, []byte(c.content)); got != c.want {
			t.Errorf("%+v: got %v", c, got)
		}
	}
	f = &RoomEventFilter{ContainsURL: &yes}
	if !f.AllowsEvent("!r:x", "m.room.message", "@a:x", []byte(`{"url":"mxc://x/y"}`)) || f.AllowsEvent("!r:x", "m.room.message", "@a:x", []byte(`{}`)) {
		t.Error("contains_url true")
	}
	f = &RoomEventFilter{ContainsURL: &no}
	if f.AllowsEvent("!r:x", "m.room.message", "@a:x", []byte(`{"url":"mxc://x/y"}`)) {
		t.Error("contains_url false")
	}
	senders := &EventFilter{Senders: []string{"@a:x"}}
	if !senders.Allows("t", "@a:x") || senders.Allows("t", "@b:x") || !senders.Allows("t", "") {
		t.Error("senders")
	}
	lim := 3
	if (&EventFilter{Limit: &lim}).LimitOr(10) != 3 || (*EventFilter)(nil).LimitOr(10) != 10 {
		t.Error("LimitOr")
	}
}
