package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

func (e *Engine) membershipRoutes(rt *httpx.Router) {
	rt.AuthedGuestOK("POST /_matrix/client/v3/join/{roomIdOrAlias}", e.handleJoinIDOrAlias)
	rt.AuthedGuestOK("POST /_matrix/client/v3/rooms/{roomId}/join", e.handleJoin)
	rt.Authed("POST /_matrix/client/v3/knock/{roomIdOrAlias}", e.handleKnock)
	rt.AuthedGuestOK("POST /_matrix/client/v3/rooms/{roomId}/leave", e.handleLeave)
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/invite", e.membershipAction(spec.Invite))
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/kick", e.membershipAction(spec.Leave))
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/ban", e.membershipAction(spec.Ban))
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/unban", e.membershipAction("unban"))
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/forget", e.handleForget)
	rt.AuthedGuestOK("GET /_matrix/client/v3/joined_rooms", e.handleJoinedRooms)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/members", e.handleMembers)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/joined_members", e.handleJoinedMembers)
}

// SetMembership changes target's membership in a room, as sender. Joins of
// local users carry their profile.
func (e *Engine) SetMembership(ctx context.Context, roomID, sender, target, membership, reason string, extra map[string]any) (*Event, error) {
	c, err := e.memberContent(ctx, target, membership, reason, false)
	if err != nil {
		return nil, err
	}
	for k, v := range extra {
		c[k] = v
	}
	evs, err := e.Send(ctx, roomID, stateSpec(sender, spec.MRoomMember, target, c))
	if err != nil {
		return nil, err
	}
	if membership == spec.Join || membership == spec.Invite {
		// Coming back un-forgets the room.
		if err := e.unforget(ctx, target, roomID); err != nil {
			return nil, err
		}
	}
	return evs[0], nil
}

// IsForgotten reports whether the user forgot the room.
func (e *Engine) IsForgotten(ctx context.Context, userID, roomID string) (bool, error) {
	var n int
	err := e.db.QueryRow(ctx, `SELECT COUNT(*) FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, userID, roomID).Scan(&n)
	return n > 0, err
}

// ForgottenRooms lists the rooms a user forgot.
func (e *Engine) ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := e.db.Query(ctx, `SELECT room_id FROM forgotten_rooms WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

type reasonBody struct {
	Reason string `json:"reason"`
}

// resolveRoomIDOrAlias turns the {roomIdOrAlias} parameter into a room ID.
func (e *Engine) resolveRoomIDOrAlias(ctx context.Context, s string) (string, error) {
	switch {
	case strings.HasPrefix(s, "!"):
		return s, nil
	case strings.HasPrefix(s, "#"):
		if _, _, err := ParseAlias(s); err != nil {
			return "", err
		}
		id, err := e.ResolveAlias(ctx, s)
		if err != nil {
			return "", err
		}
		if id == "" {
			return "", httpx.NotFound("Room alias %s not found", s)
		}
		return id, nil
	}
	return "", httpx.InvalidParam("%q is neither a room ID nor an alias", s)
}

func (e *Engine) join(r *http.Request, p *httpx.Principal, roomID string, servers []string) (any, error) {
	// Extra keys of the body go into the member event, as Synapse does
	// (clients use it for custom membership content).
	var body map[string]json.RawMessage
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	var reason string
	extra := map[string]any{}
	for k, v := range body {
		switch k {
		case "reason":
			if err := json.Unmarshal(v, &reason); err != nil {
				return nil, httpx.BadJSON("reason must be a string")
			}
		case "membership", "third_party_signed", "displayname", "avatar_url":
		default:
			extra[k] = v
		}
	}
	ctx := r.Context()
	if done, err := e.joinRemote(ctx, roomID, p.UserID, servers, reason, extra); err != nil || done {
		return map[string]string{"room_id": roomID}, err
	}
	exists, err := e.RoomExists(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, httpx.NotFound("No known servers for room %s", roomID)
	}
	// Joining again while joined changes nothing.
	if m, err := e.Membership(ctx, roomID, p.UserID); err != nil {
		return nil, err
	} else if m == spec.Join {
		return map[string]string{"room_id": roomID}, nil
	}
	if done, err := e.authoriseLocalJoin(ctx, roomID, p.UserID, servers, reason, extra); err != nil || done {
		return map[string]string{"room_id": roomID}, err
	}
	if _, err := e.SetMembership(ctx, roomID, p.UserID, p.UserID, spec.Join, reason, extra); err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

func (e *Engine) handleJoin(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	servers, err := viaParams(r)
	if err != nil {
		return nil, err
	}
	return e.join(r, p, roomID, servers)
}

func (e *Engine) handleJoinIDOrAlias(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, servers, err := e.resolveMembershipTarget(r)
	if err != nil {
		return nil, err
	}
	return e.join(r, p, roomID, servers)
}

func (e *Engine) handleKnock(r *http.Request, p *httpx.Principal) (any, error) {
	var body reasonBody
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	roomID, servers, err := e.resolveMembershipTarget(r)
	if err != nil {
		return nil, err
	}
	if done, err := e.knockRemote(r.Context(), roomID, p.UserID, servers, body.Reason); err != nil || done {
		return map[string]string{"room_id": roomID}, err
	}
	if exists, err := e.RoomExists(r.Context(), roomID); err != nil {
		return nil, err
	} else if !exists {
		return nil, httpx.NotFound("No known servers for room %s", roomID)
	}
	if _, err := e.SetMembership(r.Context(), roomID, p.UserID, p.UserID, spec.Knock, body.Reason, nil); err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

func (e *Engine) handleLeave(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	var body reasonBody
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	if done, err := e.leaveRemote(r.Context(), roomID, p.UserID, body.Reason); err != nil || done {
		return httpx.Empty, err
	}
	exists, err := e.RoomExists(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, httpx.NotFound("Room not found")
	}
	m, err := e.Membership(r.Context(), roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	if m == spec.Leave || m == spec.Ban {
		// Already out: nothing to do (a banned user cannot un-ban by leaving).
		return httpx.Empty, nil
	}
	if _, err := e.SetMembership(r.Context(), roomID, p.UserID, p.UserID, spec.Leave, body.Reason, nil); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// membershipAction handles invite, kick, ban and unban: one user acting on
// another, named by user_id in the body.
func (e *Engine) membershipAction(action string) httpx.AuthHandler {
	return func(r *http.Request, p *httpx.Principal) (any, error) {
		roomID, err := roomIDParam(r)
		if err != nil {
			return nil, err
		}
		var body struct {
			UserID string `json:"user_id"`
			Reason string `json:"reason"`
		}
		if err := httpx.DecodeJSON(r, &body); err != nil {
			return nil, err
		}
		if body.UserID == "" {
			return nil, httpx.MissingParam("user_id is required")
		}
		if err := validUserID(body.UserID); err != nil {
			return nil, err
		}
		ctx := r.Context()
		if exists, err := e.RoomExists(ctx, roomID); err != nil {
			return nil, err
		} else if !exists {
			return nil, httpx.Forbidden("You are not in this room")
		}
		current, err := e.Membership(ctx, roomID, body.UserID)
		if err != nil {
			return nil, err
		}
		membership := action
		switch action {
		case spec.Invite:
			if current == spec.Invite {
				return httpx.Empty, nil // already invited
			}
			if current == spec.Join {
				return nil, httpx.Forbidden("%s is already in the room", body.UserID)
			}
			if current == spec.Ban {
				return nil, httpx.Forbidden("%s is banned from the room", body.UserID)
			}
		case spec.Leave: // kick
			if current != spec.Join && current != spec.Invite && current != spec.Knock {
				return nil, httpx.Forbidden("%s is not in the room", body.UserID)
			}
		case "unban":
			if current != spec.Ban {
				return nil, httpx.Forbidden("%s is not banned", body.UserID)
			}
			membership = spec.Leave
		}
		if membership == spec.Invite && e.Remote != nil && !e.isLocalUser(body.UserID) {
			return httpx.Empty, e.inviteRemoteUser(ctx, roomID, p.UserID, body.UserID, body.Reason, false)
		}
		if _, err := e.SetMembership(ctx, roomID, p.UserID, body.UserID, membership, body.Reason, nil); err != nil {
			return nil, err
		}
		return httpx.Empty, nil
	}
}

func (e *Engine) handleForget(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	m, err := e.Membership(r.Context(), roomID, p.UserID)
	if err != nil && err != ErrRoomNotFound {
		return nil, err
	}
	if m == spec.Join || m == spec.Invite || m == spec.Knock {
		return nil, httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Leave the room before forgetting it")
	}
	_, err = e.db.Exec(r.Context(), `INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, p.UserID, roomID)
	if err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// JoinedRooms lists the rooms a user is joined to.
func (e *Engine) JoinedRooms(ctx context.Context, userID string) ([]string, error) {
	return e.roomsWithMembership(ctx, userID, spec.Join)
}

// roomsWithMembership lists the rooms where a user's current membership is m.
func (e *Engine) roomsWithMembership(ctx context.Context, userID, m string) ([]string, error) {
	rows, err := e.db.Query(ctx, `SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = $1 AND membership = $2 ORDER BY room_id`, userID, m)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (e *Engine) handleJoinedRooms(r *http.Request, p *httpx.Principal) (any, error) {
	rooms, err := e.JoinedRooms(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"joined_rooms": rooms}, nil
}

// memberEvents returns the m.room.member events of a state map.
func (e *Engine) memberEvents(ctx context.Context, ri *roomInfo, state StateMap) ([]*Event, error) {
	var nids []int64
	for k, nid := range state {
		if k.Type == spec.MRoomMember {
			nids = append(nids, nid)
		}
	}
	return e.EventsByNID(ctx, ri.version, nids)
}

func (e *Engine) handleMembers(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	ri, state, err := e.readableState(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	if at := q.Get("at"); at != "" {
		pos, err := ParseStreamPos(at)
		if err != nil {
			return nil, err
		}
		// A token from before the room's first event (a prev_batch of a
		// timeline that starts at m.room.create) means the room as it began.
		var first int64
		if err := e.db.QueryRow(ctx, `SELECT COALESCE(MIN(stream_pos), 0) FROM events WHERE room_id = $1 AND status = 0 AND stream_pos > 0`, ri.id).Scan(&first); err != nil {
			return nil, err
		}
		if state, err = e.stateAtPos(ctx, ri, max(pos, first), state); err != nil {
			return nil, err
		}
	}
	evs, err := e.memberEvents(ctx, ri, state)
	if err != nil {
		return nil, err
	}
	want, notWant := q.Get("membership"), q.Get("not_membership")
	var kept []*Event
	for _, ev := range evs {
		m, _ := ev.Membership()
		if (want != "" && m != want) || (notWant != "" && m == notWant) {
			continue
		}
		kept = append(kept, ev)
	}
	chunk, err := e.ClientEvents(ctx, kept, p.UserID, p.DeviceID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"chunk": chunk}, nil
}

func (e *Engine) handleJoinedMembers(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	ri, state, err := e.readableState(ctx, roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	// Unlike /members, the joined list is for current members only.
	if m, err := e.Membership(ctx, roomID, p.UserID); err != nil {
		return nil, err
	} else if m != spec.Join && !p.IsAdmin {
		return nil, httpx.Forbidden("You are not joined to this room")
	}
	evs, err := e.memberEvents(ctx, ri, state)
	if err != nil {
		return nil, err
	}
	joined := map[string]any{}
	for _, ev := range evs {
		if m, _ := ev.Membership(); m != spec.Join {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		joined[*ev.StateKey()] = map[string]any{"display_name": c.DisplayName, "avatar_url": c.AvatarURL}
	}
	return map[string]any{"joined": joined}, nil
}

// ParseStreamPos reads the stream position of a pagination or sync token:
// "s<pos>" optionally followed by "_" and other streams' positions.
func ParseStreamPos(token string) (int64, error) {
	t, _, _ := strings.Cut(token, "_")
	if !strings.HasPrefix(t, "s") && !strings.HasPrefix(t, "t") {
		return 0, httpx.InvalidParam("Invalid token %q", token)
	}
	pos, err := strconv.ParseInt(t[1:], 10, 64)
	if err != nil {
		return 0, httpx.InvalidParam("Invalid token %q", token)
	}
	return pos, nil
}

// stateAtPos returns the room's state after the last event at or before
// stream position pos (fallback when the room has no such event).
func (e *Engine) stateAtPos(ctx context.Context, ri *roomInfo, pos int64, fallback StateMap) (StateMap, error) {
	var nid int64
	err := e.db.QueryRow(ctx, `SELECT nid FROM events WHERE room_id = $1 AND stream_pos <= $2 AND status = 0 ORDER BY stream_pos DESC LIMIT 1`, ri.id, pos).Scan(&nid)
	if errors.Is(err, db.ErrNoRows) {
		return fallback, nil
	}
	if err != nil {
		return nil, err
	}
	evs, err := e.EventsByNID(ctx, ri.version, []int64{nid})
	if err != nil || len(evs) == 0 {
		return fallback, err
	}
	return e.StateAt(ctx, evs[0], true)
}

// UpdateProfileInRooms sends a new membership event in every room the user
// is joined to whose member event does not carry their current display name
// and avatar (the profile endpoints call it after a change).
func (e *Engine) UpdateProfileInRooms(ctx context.Context, userID string) error {
	if e.profiles == nil {
		return nil
	}
	dn, av, err := e.profiles(ctx, userID)
	if err != nil {
		return err
	}
	joined, err := e.JoinedRooms(ctx, userID)
	if err != nil {
		return err
	}
	for _, roomID := range joined {
		cur, err := e.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
		if err != nil || cur == nil {
			continue
		}
		var content map[string]any
		if json.Unmarshal(cur.Content(), &content) != nil {
			continue
		}
		nameChanged := setOrDelete(content, "displayname", dn)
		avatarChanged := setOrDelete(content, "avatar_url", av)
		if !nameChanged && !avatarChanged {
			continue
		}
		if _, err := e.Send(ctx, roomID, stateSpec(userID, spec.MRoomMember, userID, content)); err != nil {
			return fmt.Errorf("profile update in %s: %w", roomID, err)
		}
	}
	return nil
}

// setOrDelete makes m[key] match v (nil: absent) and reports a change.
func setOrDelete(m map[string]any, key string, v *string) bool {
	old, had := m[key]
	if v == nil {
		delete(m, key)
		return had
	}
	m[key] = *v
	return !had || old != *v
}
