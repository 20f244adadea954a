package rooms

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Membership changes that need another server: joining, knocking on or
// leaving a room this server does not follow, inviting a user of another
// server. The client endpoints of
// membership.go call the helpers of this file; the network part is the
// RemoteMembership the server wires in (the federation package).

// RemoteMembership performs the server-server membership handshakes. Errors
// meant for the client are *httpx.Error values.
type RemoteMembership interface {
	// JoinRemote joins userID to roomID through the first of servers that
	// accepts (make_join, send_join), imports the room's state and returns
	// the join event as stored. content is the member event content.
	JoinRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (*Event, error)
	// LeaveRemote leaves roomID through the first of servers that accepts
	// (make_leave, send_leave): how a user of this server rejects an
	// invite or retracts a knock. It returns the leave event.
	LeaveRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (gomatrixserverlib.PDU, error)
	// KnockRemote knocks on roomID through the first of servers that
	// accepts (make_knock, send_knock). It returns the knock event and the
	// stripped state the resident server sent (knock_room_state).
	KnockRemote(ctx context.Context, roomID, userID string, servers []string, content map[string]any) (gomatrixserverlib.PDU, []StrippedState, error)
	// InviteRemote has the invitee's server sign an invite built here (PUT
	// /invite) and returns the event with both servers' signatures.
	// inviteRoomState describes the room to the invitee.
	InviteRemote(ctx context.Context, invite gomatrixserverlib.PDU, inviteRoomState []gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error)
}

// isLocalUser reports whether userID belongs to this server.
func (e *Engine) isLocalUser(userID string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return ok && server == string(e.serverName)
}

// ServerJoined reports whether a user of this server is joined to the
// room, i.e. whether this server follows its event graph (false for
// unknown rooms).
func (e *Engine) ServerJoined(ctx context.Context, roomID string) (bool, error) {
	rows, err := e.db.Query(ctx, `SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var userID string
		if err := rows.Scan(&userID); err != nil {
			return false, err
		}
		if e.isLocalUser(userID) {
			return true, nil
		}
	}
	return false, rows.Err()
}

// resolveMembershipTarget turns the {roomIdOrAlias} parameter and the via
// (and the older server_name) query parameters into a room ID and the
// servers to reach it through. Aliases of other servers are resolved over
// federation (Federation.ResolveAlias).
func (e *Engine) resolveMembershipTarget(r *http.Request) (roomID string, servers []string, err error) {
	if servers, err = viaParams(r); err != nil {
		return "", nil, err
	}
	target := r.PathValue("roomIdOrAlias")
	_, aliasServer, aliasErr := ParseAlias(target)
	if strings.HasPrefix(target, "#") && aliasErr == nil && aliasServer != string(e.serverName) && e.Federation.ResolveAlias != nil {
		roomID, more, err := e.Federation.ResolveAlias(r.Context(), target)
		if err != nil {
			return "", nil, err
		}
		return roomID, append(servers, more...), nil
	}
	roomID, err = e.resolveRoomIDOrAlias(r.Context(), target)
	if err == nil && !validSigilID(roomID, '!') {
		err = httpx.InvalidParam("Invalid room ID %q", roomID)
	}
	return roomID, servers, err
}

// viaParams returns the servers of the via (and the older server_name)
// query parameters.
func viaParams(r *http.Request) ([]string, error) {
	q := r.URL.Query()
	var servers []string
	for _, s := range append(q["via"], q["server_name"]...) {
		if config.ValidateServerName(s) != nil {
			return nil, httpx.InvalidParam("Invalid server name %q", s)
		}
		servers = append(servers, s)
	}
	return servers, nil
}

// remoteServers returns the servers to reach a room through when this
// server does not follow it: the given ones, those of the user's
// out-of-band invite or knock (ob, also returned), or the sender's of an
// invite in the room's state — or, when there are none, the server named
// in the room ID (rooms before version 12) — this server left out. follows is true, and servers
// nil, when this server follows the room or no federation is wired: the
// change is then local.
func (e *Engine) remoteServers(ctx context.Context, roomID, userID string, given []string) (servers []string, ob *outOfBand, follows bool, err error) {
	if e.Remote == nil {
		return nil, nil, true, nil
	}
	if joined, err := e.ServerJoined(ctx, roomID); err != nil || joined {
		return nil, nil, true, err
	}
	if ob, err = e.outOfBandMembership(ctx, roomID, userID); err != nil {
		return nil, nil, false, err
	}
	candidates := slices.Clone(given)
	if ob != nil {
		candidates = append(candidates, ob.servers...)
	} else if ev, err := e.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID); err == nil && ev != nil {
		// An invite that reached the room's state while this server was
		// not in the room: its sender's server is in it.
		candidates = append(candidates, serverOf(string(ev.SenderID())))
	}
	if _, server, ok := strings.Cut(roomID, ":"); ok && len(candidates) == 0 {
		candidates = append(candidates, server)
	}
	for _, s := range candidates {
		if s != "" && s != string(e.serverName) && !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
	}
	return servers, ob, false, nil
}

// serverOf is the server name of a user ID.
func serverOf(userID string) string {
	_, server, _ := strings.Cut(userID, ":")
	return server
}

// joinRemote joins a room this server does not follow through other
// servers. done is false when the join is local (this server follows the
// room, or no server is known to ask).
func (e *Engine) joinRemote(ctx context.Context, roomID, userID string, given []string, reason string, extra map[string]any) (done bool, err error) {
	servers, _, _, err := e.remoteServers(ctx, roomID, userID, given)
	if err != nil || len(servers) == 0 {
		return false, err
	}
	content, err := e.memberContent(ctx, userID, spec.Join, reason, false)
	if err != nil {
		return false, err
	}
	for k, v := range extra {
		content[k] = v
	}
	if _, err := e.Remote.JoinRemote(ctx, roomID, userID, servers, content); err != nil {
		return false, err
	}
	return true, e.unforget(ctx, userID, roomID)
}

// authoriseLocalJoin prepares the local join of a restricted room: it
// names the local user who authorises it in extra
// (join_authorised_via_users_server). When no local user can (none may
// invite, or the allowed rooms are not followed here), the user joins
// through the room's other servers, as the spec's restricted rooms
// expect (done is then true).
func (e *Engine) authoriseLocalJoin(ctx context.Context, roomID, userID string, given []string, reason string, content map[string]any) (done bool, err error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return false, err
	}
	via, err := e.restrictedJoinAuthoriser(ctx, ri, userID)
	switch {
	case err == nil:
		if via != "" {
			content["join_authorised_via_users_server"] = via
		}
		return false, nil
	case e.Remote == nil || (!errors.Is(err, ErrUnableToGrantJoin) && !errors.Is(err, ErrUnableToAuthoriseJoin)):
		return false, err
	}
	residents, err := e.residentServers(ctx, roomID)
	if err != nil {
		return false, err
	}
	var servers []string
	for _, s := range append(slices.Clone(given), residents...) {
		if s != string(e.serverName) && !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
	}
	if len(servers) == 0 {
		return false, httpx.Forbidden("No user can authorise joining %s", roomID)
	}
	full, err := e.memberContent(ctx, userID, spec.Join, reason, false)
	if err != nil {
		return false, err
	}
	for k, v := range content {
		full[k] = v
	}
	if _, err := e.Remote.JoinRemote(ctx, roomID, userID, servers, full); err != nil {
		return false, err
	}
	return true, e.unforget(ctx, userID, roomID)
}

// knockRemote knocks on a room this server does not follow through other
// servers and records the knock out-of-band. done is false when the knock
// is local.
func (e *Engine) knockRemote(ctx context.Context, roomID, userID string, given []string, reason string) (done bool, err error) {
	servers, _, _, err := e.remoteServers(ctx, roomID, userID, given)
	if err != nil || len(servers) == 0 {
		return false, err
	}
	content, err := e.memberContent(ctx, userID, spec.Knock, reason, false)
	if err != nil {
		return false, err
	}
	knock, stripped, err := e.Remote.KnockRemote(ctx, roomID, userID, servers, content)
	if err != nil {
		return false, err
	}
	// Keep the server that accepted the knock first: it is in the room.
	return true, e.storeOutOfBand(ctx, knock, stripped, append([]string{serverOf(string(knock.SenderID()))}, servers...))
}

// leaveRemote rejects an invite or retracts a knock of a room this server
// does not follow, through the servers of the invite or knock. When none
// of them answers, an out-of-band invite or knock is rejected here only
// (the room's servers never learn of it, as in Synapse). done is false
// when the leave is local.
func (e *Engine) leaveRemote(ctx context.Context, roomID, userID, reason string) (done bool, err error) {
	servers, ob, follows, err := e.remoteServers(ctx, roomID, userID, nil)
	if err != nil || follows {
		return false, err
	}
	switch {
	case ob != nil && ob.membership == spec.Leave:
		return true, nil // already out
	case ob == nil:
		m, err := e.Membership(ctx, roomID, userID)
		if err != nil && !errors.Is(err, ErrRoomNotFound) {
			return false, err
		}
		if m != spec.Invite && m != spec.Knock {
			return false, nil
		}
	}
	content, err := e.memberContent(ctx, userID, spec.Leave, reason, false)
	if err != nil {
		return false, err
	}
	var leave gomatrixserverlib.PDU
	if len(servers) > 0 {
		if leave, err = e.Remote.LeaveRemote(ctx, roomID, userID, servers, content); err != nil {
			slog.Info("leaving through other servers failed; leaving locally", "room", roomID, "user", userID, "err", err)
		}
	}
	if leave == nil {
		if ob == nil {
			return false, nil // the invite is in the room's state: leave locally
		}
		if leave, err = e.localOutOfBandLeave(ob, content); err != nil {
			return false, err
		}
	}
	var stripped []StrippedState
	if ob != nil {
		stripped = ob.stripped
	}
	return true, e.storeOutOfBand(ctx, leave, stripped, servers)
}

// localOutOfBandLeave builds the leave event of a user whose invite or
// knock is rejected while no server of the room can be reached: it follows
// the invite or knock event and is signed here, but is never sent.
func (e *Engine) localOutOfBandLeave(ob *outOfBand, content map[string]any) (gomatrixserverlib.PDU, error) {
	impl, err := gomatrixserverlib.GetRoomVersion(ob.version)
	if err != nil {
		return nil, err
	}
	raw, err := marshalContent(content)
	if err != nil {
		return nil, err
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: ob.userID, RoomID: ob.roomID, Type: spec.MRoomMember, StateKey: &ob.userID,
		PrevEvents: []string{ob.event.EventID()}, AuthEvents: []string{ob.event.EventID()},
		Depth: ob.event.Depth() + 1, Content: raw, Version: impl,
	}
	return impl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), e.serverName, gomatrixserverlib.KeyID(e.key.ID), e.key.Private)
}

// inviteRemoteUser invites a user of another server: the invite is built
// here, signed by the invitee's server (PUT /invite), then stored like an
// event received over federation.
func (e *Engine) inviteRemoteUser(ctx context.Context, roomID, sender, target, reason string, isDirect bool) error {
	content, err := e.memberContent(ctx, target, spec.Invite, reason, isDirect)
	if err != nil {
		return err
	}
	invite, _, err := e.buildUnstored(ctx, roomID, stateSpec(sender, spec.MRoomMember, target, content))
	if err != nil {
		return err
	}
	described, err := e.StrippedStateEvents(ctx, roomID)
	if err != nil {
		return err
	}
	signed, err := e.Remote.InviteRemote(ctx, invite, pdusOf(described))
	if err != nil {
		return err
	}
	_, err = e.AcceptRemoteMembership(ctx, roomID, signed)
	return err
}

// inviteRemoteInvitees invites the users of other servers that createRoom
// names, once the room exists. As in Synapse, an invite that fails does
// not fail the room's creation: it is logged.
func (e *Engine) inviteRemoteInvitees(ctx context.Context, roomID, creator string, invitees []string, isDirect bool) {
	for _, u := range invitees {
		if err := e.inviteRemoteUser(ctx, roomID, creator, u, "", isDirect); err != nil {
			slog.Info("createRoom: inviting a user of another server failed", "room", roomID, "user", u, "err", err)
		}
	}
}

// buildUnstored builds and signs an event on the room's forward
// extremities and checks it against the current state, without storing
// it: 403 M_FORBIDDEN when the auth rules refuse it. It returns the event
// and the template it was built from.
func (e *Engine) buildUnstored(ctx context.Context, roomID string, s EventSpec) (gomatrixserverlib.PDU, *gomatrixserverlib.ProtoEvent, error) {
	pe, err := e.EventTemplate(ctx, roomID, s)
	if err != nil {
		return nil, nil, err
	}
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, nil, err
	}
	provider, err := e.authProvider(ctx, ri, ri.state, nil, pe)
	if err != nil {
		return nil, nil, err
	}
	pdu, err := ri.verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), e.serverName, gomatrixserverlib.KeyID(e.key.ID), e.key.Private)
	if err != nil {
		return nil, nil, httpx.BadJSON("Cannot build event: %v", err)
	}
	if err := gomatrixserverlib.Allowed(pdu, provider, userIDForSender); err != nil {
		return nil, nil, httpx.Forbidden("%v", err)
	}
	return pdu, pe, nil
}

// pdusOf returns the PDUs of events.
func pdusOf(evs []*Event) []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, len(evs))
	for i, ev := range evs {
		out[i] = ev.PDU
	}
	return out
}

// unforget takes a room off the user's forgotten rooms (joining or being
// invited again un-forgets it).
func (e *Engine) unforget(ctx context.Context, userID, roomID string) error {
	_, err := e.db.Exec(ctx, `DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2`, userID, roomID)
	return err
}
