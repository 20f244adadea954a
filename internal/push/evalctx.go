package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
)

// evalEvent is an event prepared once for the evaluation of every member's
// rules: its content decoded, its body lower-cased.
type evalEvent struct {
	roomID, sender string
	top            map[string]any // the event's fields, content decoded
	hasBody        bool
	lowerBody      string // content.body, lower-cased
	hasMentions    bool   // content has m.mentions: legacy rules are skipped
}

// newEvalEvent prepares an event from its parts.
func newEvalEvent(roomID, eventID, typ, sender string, stateKey *string, ts int64, content []byte) *evalEvent {
	ev := &evalEvent{roomID: roomID, sender: sender}
	ev.top = map[string]any{"room_id": roomID, "event_id": eventID, "type": typ, "sender": sender, "origin_server_ts": json.Number(fmt.Sprint(ts))}
	if stateKey != nil {
		ev.top["state_key"] = *stateKey
	}
	var c map[string]any
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	if dec.Decode(&c) == nil && c != nil {
		ev.top["content"] = c
		if body, ok := c["body"].(string); ok {
			ev.hasBody, ev.lowerBody = true, strings.ToLower(body)
		}
		_, ev.hasMentions = c["m.mentions"]
	} else {
		ev.top["content"] = map[string]any{}
	}
	return ev
}

// evalEventOf prepares a stored event.
func evalEventOf(ev *rooms.Event) *evalEvent {
	return newEvalEvent(ev.RoomID().String(), ev.EventID(), ev.Type(), string(ev.SenderID()), ev.StateKey(), int64(ev.OriginServerTS()), ev.Content())
}

// lookup follows a property path through the event.
func (ev *evalEvent) lookup(path []string) (any, bool) {
	var cur any = ev.top
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// memberView is one member as their rules see the room.
type memberView struct {
	lowerName string // display name in the room, lower-cased
	room      *roomCtx
}

// roomCtx is what evaluation needs of a room's state at an event: the
// joined members, their display names, the power levels. It is cached per
// state snapshot, so the messages between two state changes share one.
type roomCtx struct {
	memberCount int
	local       []string          // joined members of this server
	lowerNames  map[string]string // display names of joined members, lower-cased
	levels      gomatrixserverlib.PowerLevelContent
	creators    map[string]bool // privileged creators (room version 12)
}

// senderLevel is a user's power level.
func (rc *roomCtx) senderLevel(userID string) int64 {
	if rc.creators[userID] {
		return math.MaxInt64
	}
	return rc.levels.UserLevel(spec.SenderID(userID))
}

// notificationLevel is the power level a notification type needs.
func (rc *roomCtx) notificationLevel(key string) int64 { return rc.levels.NotificationLevel(key) }

// view returns member userID's view of the room.
func (rc *roomCtx) view(userID string) *memberView {
	return &memberView{lowerName: rc.lowerNames[userID], room: rc}
}

// roomContext returns the room context of the state before ev.
func (s *Service) roomContext(ctx context.Context, ev *rooms.Event, ver gomatrixserverlib.RoomVersion) (*roomCtx, error) {
	snap := ev.StateBefore
	if snap >= 0 {
		if rc, ok := s.roomCtxs.Get(snap); ok {
			return rc, nil
		}
	}
	var state rooms.StateMap
	var err error
	if snap < 0 {
		// Stored without a known state (some received events): the
		// room's current state is the best guess.
		state, err = s.rooms.CurrentState(ctx, ev.RoomID().String())
	} else {
		state, err = s.rooms.Snapshot(ctx, snap)
	}
	if err != nil {
		return nil, err
	}
	rc, err := s.buildRoomCtx(ctx, ver, state)
	if err != nil {
		return nil, err
	}
	if snap >= 0 {
		s.roomCtxs.Put(snap, rc)
	}
	return rc, nil
}

// buildRoomCtx reads the members and power levels of a state.
func (s *Service) buildRoomCtx(ctx context.Context, ver gomatrixserverlib.RoomVersion, state rooms.StateMap) (*roomCtx, error) {
	nids := make([]int64, 0, 16)
	for k, nid := range state {
		switch k.Type {
		case spec.MRoomMember, spec.MRoomPowerLevels, spec.MRoomCreate:
			nids = append(nids, nid)
		}
	}
	evs, err := s.rooms.EventsByNID(ctx, ver, nids)
	if err != nil {
		return nil, err
	}
	rc := &roomCtx{lowerNames: map[string]string{}, creators: map[string]bool{}}
	var create, pl *rooms.Event
	for _, ev := range evs {
		switch ev.Type() {
		case spec.MRoomMember:
			var c struct {
				Membership  string `json:"membership"`
				Displayname string `json:"displayname"`
			}
			if json.Unmarshal(ev.Content(), &c) != nil || c.Membership != spec.Join || ev.StateKey() == nil {
				continue
			}
			rc.memberCount++
			if s.isLocal(*ev.StateKey()) {
				rc.local = append(rc.local, *ev.StateKey())
			}
			if c.Displayname != "" {
				rc.lowerNames[*ev.StateKey()] = strings.ToLower(c.Displayname)
			}
		case spec.MRoomPowerLevels:
			pl = ev
		case spec.MRoomCreate:
			create = ev
		}
	}
	if pl != nil {
		if c, err := pl.PowerLevels(); err == nil {
			rc.levels = *c
		} else {
			rc.levels.Defaults()
		}
	} else {
		rc.levels.Defaults()
		if create != nil {
			// No power_levels event yet: the creator has 100.
			rc.levels.Users = map[string]int64{string(create.SenderID()): 100}
		}
	}
	if create != nil {
		if impl, err := gomatrixserverlib.GetRoomVersion(ver); err == nil && impl.PrivilegedCreators() {
			rc.creators[string(create.SenderID())] = true
			var c struct {
				AdditionalCreators []string `json:"additional_creators"`
			}
			if json.Unmarshal(create.Content(), &c) == nil {
				for _, u := range c.AdditionalCreators {
					rc.creators[u] = true
				}
			}
		}
	}
	return rc, nil
}
