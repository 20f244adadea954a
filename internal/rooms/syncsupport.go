package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// This file holds the read helpers /sync uses.

// Memberships returns every room where the user has a current membership,
// with that membership.
func (e *Engine) Memberships(ctx context.Context, userID string) (map[string]string, error) {
	rows, err := e.db.Query(ctx, `SELECT room_id, membership FROM current_state WHERE type = 'm.room.member' AND state_key = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("memberships: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var roomID string
		var m *string
		if err := rows.Scan(&roomID, &m); err != nil {
			return nil, err
		}
		if m != nil {
			out[roomID] = *m
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return e.mergeOutOfBand(ctx, userID, out)
}

// MembershipChange is a membership event of one user.
type MembershipChange struct {
	RoomID     string
	Membership string
	Pos        int64
}

// MembershipChanges lists the user's membership events with stream
// positions in (from, to], oldest first.
func (e *Engine) MembershipChanges(ctx context.Context, userID string, from, to int64) ([]MembershipChange, error) {
	rows, err := e.db.Query(ctx, `SELECT room_id, stream_pos, json FROM events
		WHERE type = 'm.room.member' AND state_key = $1 AND stream_pos > $2 AND stream_pos <= $3 AND status = 0
		ORDER BY stream_pos`, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("membership changes: %w", err)
	}
	defer rows.Close()
	var out []MembershipChange
	for rows.Next() {
		var c MembershipChange
		var js string
		if err := rows.Scan(&c.RoomID, &c.Pos, &js); err != nil {
			return nil, err
		}
		var ev struct {
			Content struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		_ = json.Unmarshal([]byte(js), &ev)
		c.Membership = ev.Content.Membership
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return e.outOfBandChanges(ctx, userID, from, to, out)
}

// RoomsWithEvents returns the rooms with accepted events at stream positions
// in (from, to], with the latest such position.
func (e *Engine) RoomsWithEvents(ctx context.Context, from, to int64) (map[string]int64, error) {
	rows, err := e.db.Query(ctx, `SELECT room_id, MAX(stream_pos) FROM events WHERE stream_pos > $1 AND stream_pos <= $2 AND status = 0 GROUP BY room_id`, from, to)
	if err != nil {
		return nil, fmt.Errorf("rooms with events: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var pos int64
		if err := rows.Scan(&id, &pos); err != nil {
			return nil, err
		}
		out[id] = pos
	}
	return out, rows.Err()
}

// TimelineEvents returns up to limit accepted events of a room with stream
// positions in (from, to], the newest ones, in stream order. more reports
// whether older events in the range were left out.
func (e *Engine) TimelineEvents(ctx context.Context, roomID string, from, to int64, limit int) (evs []*Event, more bool, err error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, false, err
	}
	rows, err := e.db.Query(ctx, `SELECT nid FROM events WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 AND status = 0
		ORDER BY stream_pos DESC LIMIT $4`, roomID, from, to, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("timeline: %w", err)
	}
	var nids []int64
	for rows.Next() {
		var nid int64
		if err := rows.Scan(&nid); err != nil {
			rows.Close()
			return nil, false, err
		}
		nids = append(nids, nid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if len(nids) > limit {
		nids, more = nids[:limit], true
	}
	for i, j := 0, len(nids)-1; i < j; i, j = i+1, j-1 {
		nids[i], nids[j] = nids[j], nids[i]
	}
	evs, err = e.EventsByNID(ctx, ri.version, nids)
	return evs, more, err
}

// StateAtStreamPos returns a room's state after its last accepted event at
// or before pos (empty if it had none).
func (e *Engine) StateAtStreamPos(ctx context.Context, roomID string, pos int64) (StateMap, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return e.stateAtPos(ctx, ri, pos, StateMap{})
}

// Snapshot returns the full state of a state snapshot.
func (e *Engine) Snapshot(ctx context.Context, id int64) (StateMap, error) {
	return e.loadSnapshot(ctx, id)
}

// RoomStateEvents loads the events of a state map of a room.
func (e *Engine) RoomStateEvents(ctx context.Context, roomID string, m StateMap) ([]*Event, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return e.StateEvents(ctx, ri.version, m)
}

// JoinedMembers lists the users joined to a room now.
func (e *Engine) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	return e.membersWith(ctx, roomID, spec.Join)
}

// membersWith lists the users whose current membership in the room is m.
func (e *Engine) membersWith(ctx context.Context, roomID, m string) ([]string, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := e.memberEvents(ctx, ri, ri.state)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ev := range evs {
		if mm, _ := ev.Membership(); mm == m {
			out = append(out, *ev.StateKey())
		}
	}
	return out, nil
}

// MemberCounts returns the numbers of joined and invited members.
func (e *Engine) MemberCounts(ctx context.Context, roomID string) (joined, invited int, err error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return 0, 0, err
	}
	evs, err := e.memberEvents(ctx, ri, ri.state)
	if err != nil {
		return 0, 0, err
	}
	for _, ev := range evs {
		switch m, _ := ev.Membership(); m {
		case spec.Join:
			joined++
		case spec.Invite:
			invited++
		}
	}
	return joined, invited, nil
}

// strippedTypes are the state events given to invited and knocking users.
var strippedTypes = []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName, "m.room.avatar",
	spec.MRoomCanonicalAlias, "m.room.encryption", spec.MRoomTopic}

// StrippedState returns the stripped state an invited or knocking user
// sees, plus their own membership event.
func (e *Engine) StrippedState(ctx context.Context, roomID, userID string) ([]StrippedState, error) {
	if st, ok, err := e.outOfBandStrippedState(ctx, roomID, userID); err != nil || ok {
		return st, err
	}
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var out []StrippedState
	add := func(typ, key string) error {
		ev, err := e.stateEvent(ctx, ri, ri.state, typ, key)
		if err != nil || ev == nil {
			return err
		}
		out = append(out, StrippedState{Content: json.RawMessage(ev.Content()), Sender: string(ev.SenderID()), StateKey: key, Type: typ})
		return nil
	}
	for _, t := range strippedTypes {
		if err := add(t, ""); err != nil {
			return nil, err
		}
	}
	if err := add(spec.MRoomMember, userID); err != nil {
		return nil, err
	}
	return out, nil
}

// JoinsInRange lists the users who joined any of the rooms with a join
// event at stream positions in (from, to].
func (e *Engine) JoinsInRange(ctx context.Context, roomIDs []string, from, to int64) ([]string, error) {
	if len(roomIDs) == 0 {
		return nil, nil
	}
	args := []any{from, to}
	ph := make([]string, len(roomIDs))
	for i, id := range roomIDs {
		args = append(args, id)
		ph[i] = fmt.Sprintf("$%d", i+3)
	}
	rows, err := e.db.Query(ctx, `SELECT state_key, json FROM events WHERE type = 'm.room.member' AND stream_pos > $1 AND stream_pos <= $2
		AND status = 0 AND room_id IN (`+strings.Join(ph, ",")+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("joins in range: %w", err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	var out []string
	for rows.Next() {
		var u, js string
		if err := rows.Scan(&u, &js); err != nil {
			return nil, err
		}
		var ev struct {
			Content struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if json.Unmarshal([]byte(js), &ev) == nil && ev.Content.Membership == spec.Join && !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out, rows.Err()
}
