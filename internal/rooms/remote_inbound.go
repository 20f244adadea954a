package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
)

// The resident side of the membership handshakes: what the federation
// endpoints make_join / send_join, make_leave / send_leave, make_knock /
// send_knock and invite need from the room engine.

// Errors of restricted joins (server-server API, "Restricted rooms").
var (
	// ErrUnableToAuthoriseJoin: none of the rooms the join rules allow
	// members of is known here.
	ErrUnableToAuthoriseJoin = httpx.NewError(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN", "This server cannot check the conditions of the room's join rules")
	// ErrUnableToGrantJoin: the user may join, but no user of this server
	// may invite, so another server must authorise the join.
	ErrUnableToGrantJoin = httpx.NewError(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise the join; try another server")
)

// MembershipTemplate returns the skeleton of userID's membership event
// (join, leave or knock) for make_join, make_leave and make_knock, after
// checking that the auth rules allow it against the current state (403
// M_FORBIDDEN otherwise). The room must be one this server follows (404
// M_NOT_FOUND otherwise). For a join of a restricted room, the template
// names a user of this server who authorises it
// (join_authorised_via_users_server).
func (e *Engine) MembershipTemplate(ctx context.Context, roomID, userID, membership string) (*gomatrixserverlib.ProtoEvent, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if joined, err := e.ServerJoined(ctx, roomID); err != nil {
		return nil, err
	} else if !joined {
		return nil, httpx.NotFound("This server is not in room %s", roomID)
	}
	content := map[string]any{"membership": membership}
	if membership == spec.Join {
		via, err := e.restrictedJoinAuthoriser(ctx, ri, userID)
		if err != nil {
			return nil, err
		}
		if via != "" {
			content["join_authorised_via_users_server"] = via
		}
	}
	_, pe, err := e.buildUnstored(ctx, roomID, stateSpec(userID, spec.MRoomMember, userID, content))
	return pe, err
}

// restrictedJoinAuthoriser returns the local user who authorises userID's
// join of a restricted room, or "" when the join needs no authorisation
// (the room is not restricted, or the user is invited or joined already).
// It fails with ErrUnableToAuthoriseJoin when none of the rooms the join
// rules name is followed here, 403 when the user is in none of them (or
// the rules name none), and ErrUnableToGrantJoin when no local member may
// invite.
func (e *Engine) restrictedJoinAuthoriser(ctx context.Context, ri *roomInfo, userID string) (string, error) {
	if ri.verImpl.CheckRestrictedJoinsAllowed() != nil {
		return "", nil
	}
	jr, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomJoinRules, "")
	if err != nil || jr == nil {
		return "", err
	}
	var rules gomatrixserverlib.JoinRuleContent
	if json.Unmarshal(jr.Content(), &rules) != nil || (rules.JoinRule != spec.Restricted && rules.JoinRule != spec.KnockRestricted) {
		return "", nil
	}
	if m, err := e.Membership(ctx, ri.id, userID); err != nil || m == spec.Join || m == spec.Invite {
		return "", err
	}
	conditions, known, allowed := 0, false, false
	for _, rule := range rules.Allow {
		if rule.Type != spec.MRoomMembership || rule.RoomID == "" {
			continue
		}
		conditions++
		if joined, err := e.ServerJoined(ctx, rule.RoomID); err != nil {
			return "", err
		} else if !joined {
			continue
		}
		known = true
		if m, err := e.Membership(ctx, rule.RoomID, userID); err != nil {
			return "", err
		} else if m == spec.Join {
			allowed = true
			break
		}
	}
	switch {
	case allowed:
	case conditions > 0 && !known:
		return "", ErrUnableToAuthoriseJoin
	default:
		return "", httpx.Forbidden("%s is not a member of any room the join rules of %s allow", userID, ri.id)
	}
	pw, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return "", err
	}
	members, err := e.JoinedMembers(ctx, ri.id)
	if err != nil {
		return "", err
	}
	slices.Sort(members)
	best, bestLevel := "", int64(-1)
	for _, m := range members {
		if level := pw.UserLevel(m); e.isLocalUser(m) && level >= pw.levels.Invite && level > bestLevel {
			best, bestLevel = m, level
		}
	}
	if best == "" {
		return "", ErrUnableToGrantJoin
	}
	return best, nil
}

// CheckRestrictedJoin re-checks, for send_join, a join that names a user
// of this server as its authoriser (join_authorised_via_users_server): the
// joining user must still satisfy the room's join rules.
func (e *Engine) CheckRestrictedJoin(ctx context.Context, roomID, userID string) error {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return err
	}
	_, err = e.restrictedJoinAuthoriser(ctx, ri, userID)
	return err
}

// AcceptRemoteMembership stores a membership event another server built
// (send_join, send_leave, send_knock, or an invite signed by the invitee's
// server) through the ingest path: it must be accepted, i.e. allowed by
// the state before it and by the current state; otherwise 403 M_FORBIDDEN.
// An event already accepted is returned as stored.
func (e *Engine) AcceptRemoteMembership(ctx context.Context, roomID string, pdu gomatrixserverlib.PDU) (*Event, error) {
	results, err := e.IngestEvents(ctx, roomID, []gomatrixserverlib.PDU{pdu})
	if err != nil {
		return nil, err
	}
	res := results[0]
	switch {
	case res.Stored && res.Status == StatusAccepted:
		return res.Event, nil
	case len(res.MissingPrevs) > 0 || len(res.MissingAuth) > 0:
		return nil, httpx.InvalidParam("Event %s refers to events this server does not have", pdu.EventID())
	case res.Err != nil:
		return nil, httpx.Forbidden("Event %s is not allowed: %v", pdu.EventID(), res.Err)
	}
	return nil, httpx.Forbidden("Event %s is not allowed", pdu.EventID())
}

// StateBefore returns the state before a stored event and the auth chain
// of that state and of the event (send_join's state and auth_chain).
func (e *Engine) StateBefore(ctx context.Context, ev *Event) (state, authChain []*Event, err error) {
	if !hasState(ev) {
		return nil, nil, fmt.Errorf("event %s: %w", ev.EventID(), ErrStateUnknown)
	}
	m, err := e.loadSnapshot(ctx, ev.StateBefore)
	if err != nil {
		return nil, nil, err
	}
	if state, err = e.StateEvents(ctx, ev.Version(), m); err != nil {
		return nil, nil, err
	}
	ids := make([]string, 0, len(state)+1)
	for _, s := range state {
		ids = append(ids, s.EventID())
	}
	authChain, err = e.AuthChain(ctx, ev.RoomID().String(), append(ids, ev.EventID()))
	return state, authChain, err
}

// StrippedStateEvents returns the current state events that describe a
// room to a user invited to it or knocking on it (invite_room_state,
// knock_room_state): the create event, join rules, name, avatar, canonical
// alias, encryption and topic.
func (e *Engine) StrippedStateEvents(ctx context.Context, roomID string) ([]*Event, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var out []*Event
	for _, t := range strippedTypes {
		ev, err := e.stateEvent(ctx, ri, ri.state, t, "")
		if err != nil {
			return nil, err
		}
		if ev != nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

// StoreRemoteInvite records an invite of a local user that another server
// sent (PUT /invite), already signed by this server. When this server
// follows the room, the invite joins the room's graph; otherwise it is
// kept out-of-band with the stripped state the inviting server sent, for
// /sync, and accepting it joins the room through the inviter's server.
func (e *Engine) StoreRemoteInvite(ctx context.Context, invite gomatrixserverlib.PDU, stripped []StrippedState) error {
	roomID := invite.RoomID().String()
	if joined, err := e.ServerJoined(ctx, roomID); err != nil {
		return err
	} else if joined {
		_, err := e.AcceptRemoteMembership(ctx, roomID, invite)
		if err == nil {
			return e.unforget(ctx, *invite.StateKey(), roomID)
		}
		var he *httpx.Error
		if !errors.As(err, &he) || he.Status == http.StatusForbidden {
			return err
		}
		// Built on events this server lacks: keep it out-of-band until
		// the room's servers send them.
	}
	if err := e.storeOutOfBand(ctx, invite, stripped, []string{serverOf(string(invite.SenderID()))}); err != nil {
		return err
	}
	return e.unforget(ctx, *invite.StateKey(), roomID)
}
