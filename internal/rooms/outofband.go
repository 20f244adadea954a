package rooms

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
)

// Out-of-band memberships: a local user's invite, knock or leave in a room
// whose event graph this server does not follow (no local user is joined).
// The membership event and the stripped state another server sent are kept
// in out_of_band_memberships with a stream position; /sync shows them
// through Memberships, MembershipChanges, StrippedState and OutOfBandLeave
// until the user's membership in the room's own state is newer.

// outOfBand is a row of out_of_band_memberships.
type outOfBand struct {
	roomID     string
	userID     string
	membership string
	version    gomatrixserverlib.RoomVersion
	event      gomatrixserverlib.PDU
	stripped   []StrippedState
	servers    []string
	pos        int64
}

// newerThanRoomState is the SQL condition that keeps an out-of-band row
// (alias o) only when the user's membership event in the room's current
// state is not newer.
const newerThanRoomState = `NOT EXISTS (SELECT 1 FROM current_state cs JOIN events ev ON ev.nid = cs.event_nid
	WHERE cs.room_id = o.room_id AND cs.type = 'm.room.member' AND cs.state_key = o.user_id AND ev.stream_pos > o.stream_pos)`

const outOfBandColumns = `o.room_id, o.user_id, o.membership, o.room_version, o.event_id, o.event_json, o.stripped_state, o.servers, o.stream_pos`

// scanOutOfBand reads a row of outOfBandColumns.
func scanOutOfBand(scan func(...any) error) (*outOfBand, error) {
	var ob outOfBand
	var ver, eventID, evJSON, stripped, servers string
	if err := scan(&ob.roomID, &ob.userID, &ob.membership, &ver, &eventID, &evJSON, &stripped, &servers, &ob.pos); err != nil {
		return nil, err
	}
	ob.version = gomatrixserverlib.RoomVersion(ver)
	impl, err := gomatrixserverlib.GetRoomVersion(ob.version)
	if err != nil {
		return nil, err
	}
	if ob.event, err = impl.NewEventFromTrustedJSONWithEventID(eventID, []byte(evJSON), false); err != nil {
		return nil, fmt.Errorf("out-of-band membership %s: %w", eventID, err)
	}
	if err := json.Unmarshal([]byte(stripped), &ob.stripped); err != nil {
		return nil, fmt.Errorf("out-of-band membership %s: stripped state: %w", eventID, err)
	}
	if err := json.Unmarshal([]byte(servers), &ob.servers); err != nil {
		return nil, fmt.Errorf("out-of-band membership %s: servers: %w", eventID, err)
	}
	return &ob, nil
}

// storeOutOfBand records a user's out-of-band membership (replacing the
// previous one in the room) at a new stream position and wakes the user.
// The membership is the event's.
func (e *Engine) storeOutOfBand(ctx context.Context, ev gomatrixserverlib.PDU, stripped []StrippedState, servers []string) error {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return errors.New("out-of-band membership: not a membership event")
	}
	membership, err := ev.Membership()
	if err != nil {
		return err
	}
	userID := *ev.StateKey()
	if stripped == nil {
		stripped = []StrippedState{}
	}
	strippedJSON, err := json.Marshal(stripped)
	if err != nil {
		return err
	}
	serversJSON, err := json.Marshal(slices.Compact(slices.Clone(servers)))
	if err != nil {
		return err
	}
	err = e.db.WriteTx(ctx, func(tx *db.Tx) error {
		pos, err := db.NextStreamPos(ctx, tx)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO out_of_band_memberships
			(room_id, user_id, membership, room_version, event_id, event_json, stripped_state, servers, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (user_id, room_id) DO UPDATE SET membership = excluded.membership, room_version = excluded.room_version,
				event_id = excluded.event_id, event_json = excluded.event_json, stripped_state = excluded.stripped_state,
				servers = excluded.servers, stream_pos = excluded.stream_pos`,
			ev.RoomID().String(), userID, membership, string(ev.Version()), ev.EventID(), string(ev.JSON()),
			string(strippedJSON), string(serversJSON), pos)
		return err
	})
	if err != nil {
		return fmt.Errorf("store out-of-band membership: %w", err)
	}
	if e.NotifyUser != nil {
		e.NotifyUser(userID)
	}
	return nil
}

// outOfBandMembership returns the user's out-of-band membership in a room
// when it is newer than their membership in the room's state, or nil.
func (e *Engine) outOfBandMembership(ctx context.Context, roomID, userID string) (*outOfBand, error) {
	row := e.db.QueryRow(ctx, `SELECT `+outOfBandColumns+` FROM out_of_band_memberships o
		WHERE o.user_id = $1 AND o.room_id = $2 AND `+newerThanRoomState, userID, roomID)
	ob, err := scanOutOfBand(row.Scan)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	return ob, err
}

// outOfBandMemberships returns the user's current out-of-band memberships
// with stream positions in (from, to] (from -1: all).
func (e *Engine) outOfBandMemberships(ctx context.Context, userID string, from, to int64) ([]*outOfBand, error) {
	rows, err := e.db.Query(ctx, `SELECT `+outOfBandColumns+` FROM out_of_band_memberships o
		WHERE o.user_id = $1 AND o.stream_pos > $2 AND o.stream_pos <= $3 AND `+newerThanRoomState+` ORDER BY o.stream_pos`, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("out-of-band memberships: %w", err)
	}
	defer rows.Close()
	var out []*outOfBand
	for rows.Next() {
		ob, err := scanOutOfBand(rows.Scan)
		if err != nil {
			return nil, err
		}
		out = append(out, ob)
	}
	return out, rows.Err()
}

// mergeOutOfBand adds the user's out-of-band memberships to memberships
// from the rooms' state (Memberships).
func (e *Engine) mergeOutOfBand(ctx context.Context, userID string, memberships map[string]string) (map[string]string, error) {
	obs, err := e.outOfBandMemberships(ctx, userID, -1, math.MaxInt64)
	for _, ob := range obs {
		memberships[ob.roomID] = ob.membership
	}
	return memberships, err
}

// outOfBandChanges adds the user's out-of-band memberships with stream
// positions in (from, to] to changes (MembershipChanges), keeping stream
// order.
func (e *Engine) outOfBandChanges(ctx context.Context, userID string, from, to int64, changes []MembershipChange) ([]MembershipChange, error) {
	obs, err := e.outOfBandMemberships(ctx, userID, from, to)
	if err != nil || len(obs) == 0 {
		return changes, err
	}
	for _, ob := range obs {
		changes = append(changes, MembershipChange{RoomID: ob.roomID, Membership: ob.membership, Pos: ob.pos})
	}
	slices.SortStableFunc(changes, func(a, b MembershipChange) int { return cmp.Compare(a.Pos, b.Pos) })
	return changes, nil
}

// outOfBandStrippedState returns the stripped state of an out-of-band
// invite or knock, with the user's membership event last; ok is false when
// the user's membership in the room is not out-of-band.
func (e *Engine) outOfBandStrippedState(ctx context.Context, roomID, userID string) (st []StrippedState, ok bool, err error) {
	ob, err := e.outOfBandMembership(ctx, roomID, userID)
	if err != nil || ob == nil {
		return nil, false, err
	}
	return append(slices.Clone(ob.stripped), strippedOf(ob.event)), true, nil
}

// OutOfBandLeave returns the leave event of a user who rejected an invite
// or retracted a knock of a room this server does not follow, as a client
// event, or nil when the user's latest membership in the room is not such
// a leave. /sync shows it as the timeline of the room's leave entry.
func (e *Engine) OutOfBandLeave(ctx context.Context, roomID, userID string) (*ClientEvent, error) {
	ob, err := e.outOfBandMembership(ctx, roomID, userID)
	if err != nil || ob == nil || ob.membership != spec.Leave {
		return nil, err
	}
	ce, err := e.ClientEvent(ctx, &Event{PDU: ob.event, Pos: ob.pos}, userID, "")
	if err != nil {
		return nil, err
	}
	return &ce, nil
}

// InviteSender returns the sender of a user's pending invite to a room,
// whether the invite is part of the room's state or out-of-band ("" when
// the user is not invited).
func (e *Engine) InviteSender(ctx context.Context, roomID, userID string) (string, error) {
	ob, err := e.outOfBandMembership(ctx, roomID, userID)
	if err != nil {
		return "", err
	}
	if ob != nil {
		if ob.membership != spec.Invite {
			return "", nil
		}
		return string(ob.event.SenderID()), nil
	}
	ev, err := e.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
	if errors.Is(err, ErrRoomNotFound) {
		return "", nil
	}
	if err != nil || ev == nil {
		return "", err
	}
	if m, _ := ev.Membership(); m != spec.Invite {
		return "", nil
	}
	return string(ev.SenderID()), nil
}

// strippedOf is the stripped form of a state event.
func strippedOf(ev gomatrixserverlib.PDU) StrippedState {
	var key string
	if ev.StateKey() != nil {
		key = *ev.StateKey()
	}
	return StrippedState{Content: json.RawMessage(ev.Content()), Sender: string(ev.SenderID()), StateKey: key, Type: ev.Type()}
}

// OutOfBandRoomVersion returns the version of a room this server knows
// only through out-of-band memberships of its users; ok is false when it
// has none.
func (e *Engine) OutOfBandRoomVersion(ctx context.Context, roomID string) (ver gomatrixserverlib.RoomVersion, ok bool, err error) {
	var v string
	err = e.db.QueryRow(ctx, `SELECT room_version FROM out_of_band_memberships WHERE room_id = $1 LIMIT 1`, roomID).Scan(&v)
	if errors.Is(err, db.ErrNoRows) {
		return "", false, nil
	}
	return gomatrixserverlib.RoomVersion(v), err == nil, err
}

// AcceptOutOfBandRescind records the leave event that withdraws an
// out-of-band invite of a local user, received from the room's servers
// although this server does not follow the room. Its auth cannot be
// checked without the room's state, so, as Synapse does, it is accepted
// when it is a leave of the invitee sent by the invite's sender with the
// invite among its auth events (the caller has checked its signatures).
// It reports whether the event was recorded.
func (e *Engine) AcceptOutOfBandRescind(ctx context.Context, pdu gomatrixserverlib.PDU) (bool, error) {
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil || *pdu.StateKey() == string(pdu.SenderID()) || !e.isLocalUser(*pdu.StateKey()) {
		return false, nil
	}
	if m, err := pdu.Membership(); err != nil || m != spec.Leave {
		return false, nil
	}
	ob, err := e.outOfBandMembership(ctx, pdu.RoomID().String(), *pdu.StateKey())
	if err != nil || ob == nil || ob.membership != spec.Invite || ob.event.SenderID() != pdu.SenderID() ||
		!slices.Contains(pdu.AuthEventIDs(), ob.event.EventID()) {
		return false, err
	}
	return true, e.storeOutOfBand(ctx, pdu, ob.stripped, ob.servers)
}
