package sync

import (
	"context"
	"encoding/json"
	"sort"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/rooms"
)

// defaultTimelineLimit is the timeline length when the filter sets none.
const defaultTimelineLimit = 10

// maxTimelineLimit caps the timeline length a filter may ask for.
const maxTimelineLimit = 500

// RoomsSection is the rooms part of a sync response.
type RoomsSection struct {
	Join   map[string]*JoinedRoom  `json:"join,omitempty"`
	Invite map[string]*InvitedRoom `json:"invite,omitempty"`
	Knock  map[string]*KnockedRoom `json:"knock,omitempty"`
	Leave  map[string]*JoinedRoom  `json:"leave,omitempty"`
}

func (r *RoomsSection) empty() bool {
	return len(r.Join) == 0 && len(r.Invite) == 0 && len(r.Knock) == 0 && len(r.Leave) == 0
}

// JoinedRoom is a room in the join (or, without ephemeral data, the leave)
// section.
type JoinedRoom struct {
	Summary     *Summary   `json:"summary,omitempty"`
	State       *EventList `json:"state,omitempty"`
	StateAfter  *EventList `json:"state_after,omitempty"`
	Timeline    Timeline   `json:"timeline"`
	Ephemeral   *EventList `json:"ephemeral,omitempty"`
	AccountData *EventList `json:"account_data,omitempty"`

	UnreadNotifications       *UnreadCounts           `json:"unread_notifications,omitempty"`
	UnreadThreadNotifications map[string]UnreadCounts `json:"unread_thread_notifications,omitempty"`
}

// Summary is a joined room's summary.
type Summary struct {
	Heroes       []string `json:"m.heroes,omitempty"`
	JoinedCount  *int     `json:"m.joined_member_count,omitempty"`
	InvitedCount *int     `json:"m.invited_member_count,omitempty"`
}

// Timeline is a room's timeline section.
type Timeline struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
}

// InvitedRoom is a room in the invite section.
type InvitedRoom struct {
	InviteState EventList `json:"invite_state"`
}

// KnockedRoom is a room in the knock section.
type KnockedRoom struct {
	KnockState EventList `json:"knock_state"`
}

// roomWork is what one room of the response needs.
type roomWork struct {
	since int64 // -1: send the room in full
	to    int64 // last position to include (the leave for left rooms)
	// newlyJoined marks a room joined since the client's token: its
	// timeline is flagged limited so that clients start it afresh.
	newlyJoined bool
}

// roomsSection computes the rooms part of the response.
func (s *Service) roomsSection(ctx context.Context, rq *Request) (*RoomsSection, error) {
	out := &RoomsSection{Join: map[string]*JoinedRoom{}, Invite: map[string]*InvitedRoom{}, Knock: map[string]*KnockedRoom{}, Leave: map[string]*JoinedRoom{}}
	var rf *accounts.RoomFilter
	if rq.Filter != nil {
		rf = rq.Filter.Room
	}
	includeLeave := rf != nil && rf.IncludeLeave
	memberships, err := s.rooms.Memberships(ctx, rq.UserID)
	if err != nil {
		return nil, err
	}
	join := map[string]roomWork{}
	leave := map[string]roomWork{}
	var invites, knocks []string
	if rq.Initial {
		var forgotten map[string]bool
		if includeLeave {
			if forgotten, err = s.rooms.ForgottenRooms(ctx, rq.UserID); err != nil {
				return nil, err
			}
		}
		for roomID, m := range memberships {
			switch m {
			case spec.Join:
				join[roomID] = roomWork{since: -1, to: rq.To}
			case spec.Invite:
				invites = append(invites, roomID)
			case spec.Knock:
				knocks = append(knocks, roomID)
			case spec.Leave, spec.Ban:
				if includeLeave && !forgotten[roomID] {
					leave[roomID] = roomWork{since: -1}
				}
			}
		}
	} else {
		since := rq.Since.Pos
		changes, err := s.rooms.MembershipChanges(ctx, rq.UserID, since, rq.To)
		if err != nil {
			return nil, err
		}
		changed := map[string]rooms.MembershipChange{} // the last change per room
		for _, c := range changes {
			changed[c.RoomID] = c
		}
		for roomID, c := range changed {
			switch c.Membership {
			case spec.Join:
				join[roomID] = roomWork{since: -1, to: rq.To, newlyJoined: true}
				rq.newlyJoined = append(rq.newlyJoined, roomID)
			case spec.Invite:
				invites = append(invites, roomID)
			case spec.Knock:
				knocks = append(knocks, roomID)
			case spec.Leave, spec.Ban:
				leave[roomID] = roomWork{since: since, to: c.Pos}
			}
		}
		active, err := s.rooms.RoomsWithEvents(ctx, since, rq.To)
		if err != nil {
			return nil, err
		}
		receiptRooms, err := s.receiptRoomsSince(ctx, rq.UserID, since, rq.To)
		if err != nil {
			return nil, err
		}
		adRooms, err := s.roomAccountDataRooms(ctx, rq.UserID, since, rq.To)
		if err != nil {
			return nil, err
		}
		for roomID, m := range memberships {
			if m != spec.Join {
				continue
			}
			if _, done := join[roomID]; done {
				continue
			}
			_, typingChanged := s.typingSince(roomID, rq.Since.Typing)
			if _, ok := active[roomID]; ok || receiptRooms[roomID] || adRooms[roomID] || typingChanged || rq.FullState {
				w := roomWork{since: since, to: rq.To}
				if rq.FullState {
					w.since = -1
				}
				join[roomID] = w
			}
		}
	}
	var unread map[string]map[string]UnreadCounts
	if len(join) > 0 {
		if unread, err = s.unreadCounts(ctx, rq); err != nil {
			return nil, err
		}
	}
	for roomID, w := range join {
		if !rf.AllowsRoom(roomID) {
			continue
		}
		jr, err := s.joinedRoom(ctx, rq, roomID, w, true)
		if err != nil {
			return nil, err
		}
		s.setUnread(jr, unread[roomID], perThreadCounts(rq))
		out.Join[roomID] = jr
	}
	for roomID, w := range leave {
		if !rf.AllowsRoom(roomID) {
			continue
		}
		if lr, ok, err := s.outOfBandLeave(ctx, rq.UserID, roomID); err != nil || ok {
			if err != nil {
				return nil, err
			}
			out.Leave[roomID] = lr
			continue
		}
		if w.to == 0 {
			pos, err := s.leavePos(ctx, rq.UserID, roomID, rq.To)
			if err != nil {
				return nil, err
			}
			w.to = pos
		}
		lr, err := s.joinedRoom(ctx, rq, roomID, w, false)
		if err != nil {
			return nil, err
		}
		out.Leave[roomID] = lr
	}
	for _, roomID := range invites {
		if !rf.AllowsRoom(roomID) {
			continue
		}
		if len(rq.ignored) > 0 {
			sender, err := s.rooms.InviteSender(ctx, roomID, rq.UserID)
			if err != nil {
				return nil, err
			}
			if rq.ignored[sender] {
				continue // invites from ignored users are not shown
			}
		}
		st, err := s.strippedState(ctx, roomID, rq.UserID)
		if err != nil {
			return nil, err
		}
		out.Invite[roomID] = &InvitedRoom{InviteState: EventList{Events: st}}
	}
	for _, roomID := range knocks {
		if !rf.AllowsRoom(roomID) {
			continue
		}
		st, err := s.strippedState(ctx, roomID, rq.UserID)
		if err != nil {
			return nil, err
		}
		out.Knock[roomID] = &KnockedRoom{KnockState: EventList{Events: st}}
	}
	return out, nil
}

// leavePos is the stream position of the user's latest membership event in
// the room at or before to.
func (s *Service) leavePos(ctx context.Context, userID, roomID string, to int64) (int64, error) {
	changes, err := s.rooms.MembershipChanges(ctx, userID, -1, to)
	if err != nil {
		return 0, err
	}
	var pos int64
	for _, c := range changes {
		if c.RoomID == roomID {
			pos = c.Pos
		}
	}
	return pos, nil
}

func (s *Service) strippedState(ctx context.Context, roomID, userID string) ([]json.RawMessage, error) {
	st, err := s.rooms.StrippedState(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, 0, len(st))
	for _, e := range st {
		b, _ := json.Marshal(e)
		out = append(out, b)
	}
	return out, nil
}

// typingSince returns the room's m.typing event when it changed after serial.
func (s *Service) typingSince(roomID string, serial int64) (json.RawMessage, bool) {
	users, last := s.typing.Get(roomID)
	if last <= serial {
		return nil, false
	}
	if users == nil {
		users = []string{}
	}
	b, _ := json.Marshal(map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
	return b, true
}

// roomAccountDataRooms lists rooms whose account data for the user changed
// in (from, to].
func (s *Service) roomAccountDataRooms(ctx context.Context, userID string, from, to int64) (map[string]bool, error) {
	return s.db.QueryStringSet(ctx, `SELECT DISTINCT room_id FROM account_data WHERE user_id = $1 AND room_id <> '' AND stream_pos > $2 AND stream_pos <= $3`, userID, from, to)
}

// joinedRoom builds a room entry: the timeline of (w.since, w.to], the
// state before it, and for joined rooms ephemeral data and the summary.
func (s *Service) joinedRoom(ctx context.Context, rq *Request, roomID string, w roomWork, joined bool) (*JoinedRoom, error) {
	var rf *accounts.RoomFilter
	if rq.Filter != nil {
		rf = rq.Filter.Room
	}
	var tf, sf, ef, af *accounts.RoomEventFilter
	if rf != nil {
		tf, sf, ef, af = rf.Timeline, rf.State, rf.Ephemeral, rf.AccountData
	}
	limit := defaultTimelineLimit
	if tf != nil {
		limit = min(tf.LimitOr(defaultTimelineLimit), maxTimelineLimit)
	}
	vis := s.rooms.NewVisibility(rq.UserID)
	timeline, limited, err := s.timeline(ctx, vis, roomID, w, limit, tf, rq.ignored)
	if err != nil {
		return nil, err
	}
	jr := &JoinedRoom{}
	prevPos := w.to
	if len(timeline) > 0 {
		prevPos = timeline[0].Pos - 1
	}
	jr.Timeline.Limited = limited || (w.newlyJoined && len(timeline) > 0)
	jr.Timeline.PrevBatch = Token{Pos: prevPos, Typing: rq.Typing}.String()
	if jr.Timeline.Events, err = s.format(ctx, rq, timeline); err != nil {
		return nil, err
	}

	// State: the full state before the timeline when sending the room in
	// full, else what changed between the since token and the timeline.
	var before rooms.StateMap
	if len(timeline) > 0 {
		if before, err = s.rooms.Snapshot(ctx, timeline[0].StateBefore); err != nil {
			return nil, err
		}
	} else if before, err = s.rooms.StateAtStreamPos(ctx, roomID, w.to); err != nil {
		return nil, err
	}
	stateMap := before
	if w.since >= 0 {
		if !limited {
			stateMap = rooms.StateMap{}
		} else {
			atSince, err := s.rooms.StateAtStreamPos(ctx, roomID, w.since)
			if err != nil {
				return nil, err
			}
			stateMap = changedState(atSince, before)
		}
	}
	if rq.StateAfter {
		after := before
		if len(timeline) > 0 {
			last := timeline[len(timeline)-1]
			if after, err = s.rooms.StateAtStreamPos(ctx, roomID, last.Pos); err != nil {
				return nil, err
			}
		}
		if w.since >= 0 {
			atSince, err := s.rooms.StateAtStreamPos(ctx, roomID, w.since)
			if err != nil {
				return nil, err
			}
			after = changedState(atSince, after)
		}
		stateMap = after
	}
	stateEvents, err := s.stateEvents(ctx, rq, roomID, stateMap, timeline, sf)
	if err != nil {
		return nil, err
	}
	if rq.StateAfter {
		jr.StateAfter = &EventList{Events: stateEvents}
	} else {
		jr.State = &EventList{Events: stateEvents}
	}

	// Room account data.
	from := w.since
	ad, err := s.accountData(ctx, rq.UserID, roomID, from, rq.To, filterOf(af))
	if err != nil {
		return nil, err
	}
	if len(ad) > 0 {
		jr.AccountData = &EventList{Events: ad}
	}
	if !joined {
		return jr, nil
	}
	// Ephemeral: typing and receipts.
	var eph []json.RawMessage
	typingSerial := rq.Since.Typing
	if w.since < 0 {
		typingSerial = -1
	}
	if ev, ok := s.typingSince(roomID, typingSerial); ok && allowsType(filterOf(ef), "m.typing") {
		eph = append(eph, ev)
	}
	if allowsType(filterOf(ef), "m.receipt") {
		rc, err := s.receiptsEDU(ctx, roomID, rq.UserID, w.since, rq.To)
		if err != nil {
			return nil, err
		}
		if rc != nil {
			eph = append(eph, rc)
		}
	}
	if len(eph) > 0 {
		jr.Ephemeral = &EventList{Events: eph}
	}
	jr.Summary, err = s.summary(ctx, roomID, rq.UserID)
	return jr, err
}

// timeline returns the visible events of (w.since, w.to] that pass the
// filter, at most limit of the newest, and whether older ones were left
// out.
func (s *Service) timeline(ctx context.Context, vis *rooms.Visibility, roomID string, w roomWork, limit int, f *accounts.RoomEventFilter, ignored map[string]bool) ([]*rooms.Event, bool, error) {
	if limit <= 0 {
		_, more, err := s.rooms.TimelineEvents(ctx, roomID, w.since, w.to, 0)
		return nil, more, err
	}
	var out []*rooms.Event
	upper := w.to
	for len(out) < limit {
		batch, more, err := s.rooms.TimelineEvents(ctx, roomID, w.since, upper, max(limit*2, 20))
		if err != nil {
			return nil, false, err
		}
		if len(batch) == 0 {
			return out, false, nil
		}
		upper = batch[0].Pos - 1
		kept, err := vis.Filter(ctx, batch)
		if err != nil {
			return nil, false, err
		}
		var pass []*rooms.Event
		for _, ev := range kept {
			if !ev.IsState() && ignored[string(ev.SenderID())] {
				continue // messages of ignored users are hidden
			}
			if f.AllowsEvent(roomID, ev.Type(), string(ev.SenderID()), ev.Content()) {
				pass = append(pass, ev)
			}
		}
		out = append(pass, out...)
		if len(out) > limit {
			return out[len(out)-limit:], true, nil
		}
		if !more {
			return out, false, nil
		}
		if len(kept) < len(batch) && len(kept) == 0 {
			// Everything older is invisible to this user: stop here.
			return out, true, nil
		}
	}
	return out, true, nil
}

// stateEvents formats the state section, applying the state filter and
// lazy-loading of members.
func (s *Service) stateEvents(ctx context.Context, rq *Request, roomID string, m rooms.StateMap, timeline []*rooms.Event, f *accounts.RoomEventFilter) ([]json.RawMessage, error) {
	inTimeline := map[string]bool{}
	senders := map[string]bool{rq.UserID: true}
	for _, ev := range timeline {
		inTimeline[ev.EventID()] = true
		senders[string(ev.SenderID())] = true
	}
	lazy := f != nil && f.LazyLoadMembers
	if lazy && len(timeline) > 0 && rq.Initial {
		// Lazy loading may need members the state delta left out.
		full, err := s.rooms.Snapshot(ctx, timeline[0].StateBefore)
		if err != nil {
			return nil, err
		}
		for u := range senders {
			k := rooms.StateKey{Type: spec.MRoomMember, StateKey: u}
			if nid, ok := full[k]; ok {
				if _, have := m[k]; !have {
					m = m.Clone()
					m[k] = nid
				}
			}
		}
	}
	evs, err := s.rooms.RoomStateEvents(ctx, roomID, m)
	if err != nil {
		return nil, err
	}
	var kept []*rooms.Event
	for _, ev := range evs {
		// With state_after, clients take state only from that section, so
		// it repeats state events that are also in the timeline.
		if inTimeline[ev.EventID()] && !rq.StateAfter {
			continue
		}
		if lazy && ev.Type() == spec.MRoomMember && !senders[*ev.StateKey()] {
			continue
		}
		if !f.AllowsEvent(roomID, ev.Type(), string(ev.SenderID()), ev.Content()) {
			continue
		}
		kept = append(kept, ev)
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].Pos < kept[j].Pos })
	if f != nil && f.Limit != nil && len(kept) > *f.Limit {
		kept = kept[:*f.Limit]
	}
	return s.format(ctx, rq, kept)
}

// summary builds the room summary: heroes and member counts.
func (s *Service) summary(ctx context.Context, roomID, userID string) (*Summary, error) {
	joined, invited, err := s.rooms.MemberCounts(ctx, roomID)
	if err != nil {
		return nil, err
	}
	sum := &Summary{JoinedCount: &joined, InvitedCount: &invited}
	name, err := s.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomName, "")
	if err != nil {
		return nil, err
	}
	alias, err := s.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil {
		return nil, err
	}
	if name == nil && alias == nil {
		members, err := s.rooms.JoinedMembers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		sort.Strings(members)
		for _, m := range members {
			if m != userID && len(sum.Heroes) < 5 {
				sum.Heroes = append(sum.Heroes, m)
			}
		}
	}
	return sum, nil
}

// changedState returns the entries of next that differ from prev.
func changedState(prev, next rooms.StateMap) rooms.StateMap {
	out := rooms.StateMap{}
	for k, v := range next {
		if prev[k] != v {
			out[k] = v
		}
	}
	return out
}

// format turns events into their client form without room_id, applying
// the filter's event_fields.
func (s *Service) format(ctx context.Context, rq *Request, evs []*rooms.Event) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	federation := rq.Filter != nil && rq.Filter.EventFormat == "federation"
	for _, ev := range evs {
		if federation {
			// The event as servers exchange it (signatures, hashes, auth
			// and prev events).
			b := json.RawMessage(ev.JSON())
			if rq.Filter.EventFields != nil {
				b = pruneFields(b, rq.Filter.EventFields)
			}
			out = append(out, b)
			continue
		}
		ce, err := s.rooms.ClientEvent(ctx, ev, rq.UserID, rq.DeviceID)
		if err != nil {
			return nil, err
		}
		ce.RoomID = ""
		b, err := json.Marshal(ce)
		if err != nil {
			return nil, err
		}
		if rq.Filter != nil && rq.Filter.EventFields != nil {
			b = pruneFields(b, rq.Filter.EventFields)
		}
		out = append(out, b)
	}
	return out, nil
}

func filterOf(f *accounts.RoomEventFilter) *accounts.EventFilter {
	if f == nil {
		return nil
	}
	return &f.EventFilter
}

// allowsType reports whether a filter lets data of type typ through.
func allowsType(f *accounts.EventFilter, typ string) bool { return f.Allows(typ, "") }
