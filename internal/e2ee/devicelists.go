package e2ee

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sort"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/sync"
)

// Device lists (client-server spec, "Tracking the device list for a user"):
// a client learns from /sync's device_lists and from /keys/changes which
// users changed their devices or cross-signing keys, and which users it
// started or stopped sharing a room with. Both kinds of change are rows
// with positions of the global stream, read by token.

// recordDeviceListChange records, inside tx, that userID's device deviceID
// ("" for the cross-signing keys) changed, and returns the position.
func recordDeviceListChange(ctx context.Context, tx *db.Tx, userID, deviceID string) (int64, error) {
	pos, err := db.NextStreamPos(ctx, tx)
	if err != nil {
		return 0, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO e2ee_device_list_changes (stream_pos, user_id, device_id) VALUES ($1, $2, $3)`, pos, userID, deviceID)
	return pos, err
}

// afterDeviceListChange wakes the users who see userID's change (userID and
// everyone sharing a room with them) and tells federation.
func (s *Service) afterDeviceListChange(ctx context.Context, userID, deviceID string, pos int64) {
	peers, err := s.peers(ctx, userID)
	if err != nil {
		slog.Warn("e2ee: waking the peers of a device-list change", "user", userID, "err", err)
	}
	s.notifier.Wake(append(peers, userID)...)
	if s.Remote.DeviceListChanged != nil {
		s.Remote.DeviceListChanged(userID, deviceID, pos)
	}
}

// peers lists the users joined to a room userID is joined to (userID
// excluded).
func (s *Service) peers(ctx context.Context, userID string) ([]string, error) {
	joined, err := s.rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, r := range joined {
		members, err := s.rooms.JoinedMembers(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, m := range members {
			set[m] = true
		}
	}
	delete(set, userID)
	return sortedKeys(set), nil
}

// OnNewEvents records the joins and departures among newly committed
// events: the users of the room start or stop sharing it with the member.
// The room engine calls it after each commit, before the sync service wakes
// the room (so that the wake-up finds the change recorded).
func (s *Service) OnNewEvents(evs []*rooms.Event) {
	type change struct {
		room, user string
		joined     bool
	}
	var changes []change
	ctx := context.Background()
	for _, ev := range evs {
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || ev.Status != rooms.StatusAccepted {
			continue
		}
		m, err := ev.Membership()
		if err != nil {
			continue
		}
		was, err := s.membershipBefore(ctx, ev)
		if err != nil {
			slog.Warn("e2ee: membership before an event", "event", ev.EventID(), "err", err)
		}
		if (m == spec.Join) != (was == spec.Join) {
			changes = append(changes, change{room: ev.RoomID().String(), user: *ev.StateKey(), joined: m == spec.Join})
		}
	}
	if len(changes) == 0 {
		return
	}
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		for _, c := range changes {
			pos, err := db.NextStreamPos(ctx, tx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO e2ee_membership_changes (stream_pos, room_id, user_id, joined) VALUES ($1, $2, $3, $4)`,
				pos, c.room, c.user, c.joined); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		slog.Error("e2ee: recording membership changes", "err", err)
	}
}

// membershipBefore is the membership of the event's target in the state
// before the event ("" if none).
func (s *Service) membershipBefore(ctx context.Context, ev *rooms.Event) (string, error) {
	state, err := s.rooms.StateAt(ctx, ev, false)
	if err != nil {
		return "", err
	}
	key := rooms.StateKey{Type: spec.MRoomMember, StateKey: *ev.StateKey()}
	nid, ok := state[key]
	if !ok {
		return "", nil
	}
	prev, err := s.rooms.RoomStateEvents(ctx, ev.RoomID().String(), rooms.StateMap{key: nid})
	if err != nil || len(prev) == 0 {
		return "", err
	}
	return prev[0].Membership()
}

// deviceListChanges computes device_lists for userID over the stream range
// (from, to]: changed holds the users sharing a room with userID (and
// userID itself) who changed devices or cross-signing keys, or who started
// sharing a room with userID; left holds those who no longer share any.
func (s *Service) deviceListChanges(ctx context.Context, userID string, from, to int64) (changed, left []string, err error) {
	mine, err := s.rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return nil, nil, err
	}
	myRooms := make(map[string]bool, len(mine))
	for _, r := range mine {
		myRooms[r] = true
	}
	changedCand, leftCand := map[string]bool{}, map[string]bool{}

	// Joins and departures: the user's own (everyone in the room), and
	// other members' in the user's rooms.
	rows, err := s.db.Query(ctx, `SELECT room_id, user_id, joined FROM e2ee_membership_changes
		WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos`, from, to)
	if err != nil {
		return nil, nil, err
	}
	type memberChange struct {
		room, user string
		joined     bool
	}
	var mcs []memberChange
	for rows.Next() {
		var mc memberChange
		if err := rows.Scan(&mc.room, &mc.user, &mc.joined); err != nil {
			rows.Close()
			return nil, nil, err
		}
		if mc.user == userID || myRooms[mc.room] {
			mcs = append(mcs, mc)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	for _, mc := range mcs {
		target := changedCand
		if !mc.joined {
			target = leftCand
		}
		if mc.user != userID {
			target[mc.user] = true
			continue
		}
		members, err := s.rooms.JoinedMembers(ctx, mc.room)
		if err != nil {
			return nil, nil, err
		}
		for _, m := range members {
			if m != userID {
				target[m] = true
			}
		}
	}

	// Device and cross-signing key changes.
	rows, err = s.db.Query(ctx, `SELECT DISTINCT user_id FROM e2ee_device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2`, from, to)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return nil, nil, err
		}
		changedCand[u] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}

	// Whether each candidate shares a room with the user now decides
	// between changed and left.
	delete(leftCand, userID)
	shares, err := s.sharingCheck(ctx, myRooms, len(changedCand)+len(leftCand))
	if err != nil {
		return nil, nil, err
	}
	for u := range changedCand {
		ok := u == userID
		if !ok {
			if ok, err = shares(u); err != nil {
				return nil, nil, err
			}
		}
		if ok {
			changed = append(changed, u)
			delete(leftCand, u)
		}
	}
	for u := range leftCand {
		ok, err := shares(u)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			left = append(left, u)
		}
	}
	sort.Strings(changed)
	sort.Strings(left)
	return changed, left, nil
}

// peerSetThreshold is the number of users above which deviceListChanges
// loads every member of the user's rooms once instead of looking up each
// user's rooms.
const peerSetThreshold = 32

// sharingCheck returns a function reporting whether a user is joined to
// one of myRooms, suited to asking about n users.
func (s *Service) sharingCheck(ctx context.Context, myRooms map[string]bool, n int) (func(string) (bool, error), error) {
	if n <= peerSetThreshold {
		return func(u string) (bool, error) {
			theirs, err := s.rooms.JoinedRooms(ctx, u)
			if err != nil {
				return false, err
			}
			return slices.ContainsFunc(theirs, func(r string) bool { return myRooms[r] }), nil
		}, nil
	}
	members := map[string]bool{}
	for r := range myRooms {
		ms, err := s.rooms.JoinedMembers(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			members[m] = true
		}
	}
	return func(u string) (bool, error) { return members[u], nil }, nil
}

// handleChanges serves GET /keys/changes: the device-list changes between
// two sync tokens.
func (s *Service) handleChanges(r *http.Request, p *httpx.Principal) (any, error) {
	q := r.URL.Query()
	if !q.Has("from") {
		return nil, httpx.MissingParam("Missing from")
	}
	if !q.Has("to") {
		return nil, httpx.MissingParam("Missing to")
	}
	from, err := sync.ParseToken(q.Get("from"))
	if err != nil {
		return nil, err
	}
	to, err := sync.ParseToken(q.Get("to"))
	if err != nil {
		return nil, err
	}
	changed, left, err := s.deviceListChanges(r.Context(), p.UserID, from.Pos, to.Pos)
	if err != nil {
		return nil, err
	}
	return map[string][]string{"changed": nonNil(changed), "left": nonNil(left)}, nil
}

// nonNil turns a nil list into an empty one, for JSON.
func nonNil(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// sortedKeys lists a set in order.
func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
