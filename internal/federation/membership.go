package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// The membership handshakes of the server-server API, both ways:
//
//	GET /v1/make_join, PUT /v2/send_join (and v1)    membership_join.go
//	GET /v1/make_leave, PUT /v2/send_leave (and v1)  membership_leave.go
//	GET /v1/make_knock, PUT /v1/send_knock           membership_leave.go
//	PUT /v2/invite                                   membership_invite.go
//
// Inbound, this server is the resident server: it answers templates for
// the membership events of other servers' users, and accepts the signed
// events into its rooms. Outbound, Service implements
// rooms.RemoteMembership: the room engine asks it to join, leave or knock
// on rooms this server does not follow, and to have invites signed by the
// invitee's server.

// MembershipRoutes registers the membership endpoints (after Routes).
func (s *Service) MembershipRoutes() {
	const v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
	s.handle("GET "+v1+"/make_join/{roomId}/{userId}", s.makeHandler(spec.Join))
	s.handle("GET "+v1+"/make_leave/{roomId}/{userId}", s.makeHandler(spec.Leave))
	s.handle("GET "+v1+"/make_knock/{roomId}/{userId}", s.makeHandler(spec.Knock))
	s.handle("PUT "+v2+"/send_join/{roomId}/{eventId}", s.sendHandler(spec.Join, s.sendJoinAnswer))
	s.handle("PUT "+v1+"/send_join/{roomId}/{eventId}", v1Answer(s.sendHandler(spec.Join, s.sendJoinAnswer)))
	s.handle("PUT "+v2+"/send_leave/{roomId}/{eventId}", s.sendHandler(spec.Leave, emptyAnswer))
	s.handle("PUT "+v1+"/send_leave/{roomId}/{eventId}", v1Answer(s.sendHandler(spec.Leave, emptyAnswer)))
	s.handle("PUT "+v1+"/send_knock/{roomId}/{eventId}", s.sendHandler(spec.Knock, s.sendKnockAnswer))
	s.handle("PUT "+v2+"/invite/{roomId}/{eventId}", s.handleInvite)
}

// v1Answer wraps the answer of a v2 endpoint the way its deprecated v1
// form sends it: [200, answer].
func v1Answer(h Handler) Handler {
	return func(r *http.Request, origin string) (any, error) {
		out, err := h(r, origin)
		if err != nil {
			return nil, err
		}
		return []any{http.StatusOK, out}, nil
	}
}

// supportedRoomVersions lists the room versions this server can take part
// in (the ver parameter of make_join and make_knock), sorted.
func supportedRoomVersions() []string {
	var out []string
	for v := range gomatrixserverlib.StableRoomVersions() {
		out = append(out, string(v))
	}
	slices.Sort(out)
	return out
}

// incompatibleRoomVersion is the 400 M_INCOMPATIBLE_ROOM_VERSION answer
// for a room of version ver.
func incompatibleRoomVersion(ver gomatrixserverlib.RoomVersion) *httpx.Error {
	return httpx.NewError(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION",
		"The room is of version %s, which the server does not support", ver).With("room_version", string(ver))
}

// membershipPath reads and checks the {roomId} and {userId} or {eventId}
// path values of a membership endpoint.
func membershipPath(r *http.Request, second string) (roomID, other string, err error) {
	roomID, other = r.PathValue("roomId"), r.PathValue(second)
	if len(roomID) < 2 || len(roomID) > 255 || roomID[0] != '!' {
		return "", "", httpx.InvalidParam("Invalid room ID %q", roomID)
	}
	switch second {
	case "userId":
		if _, err := spec.NewUserID(other, true); err != nil || len(other) > 255 {
			return "", "", httpx.InvalidParam("Invalid user ID %q", other)
		}
	case "eventId":
		if len(other) < 2 || len(other) > 255 || other[0] != '$' {
			return "", "", httpx.InvalidParam("Invalid event ID %q", other)
		}
	}
	return roomID, other, nil
}

// residentRoom returns the version of a room this server knows and checks
// that its server ACL lets origin take part in it.
func (s *Service) residentRoom(ctx context.Context, roomID, origin string) (gomatrixserverlib.RoomVersion, error) {
	ver, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return "", err
	}
	if ok, err := s.rooms.ServerAllowed(ctx, roomID, origin); err != nil {
		return "", err
	} else if !ok {
		return "", httpx.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	return ver, nil
}

// makeHandler answers make_join, make_leave and make_knock: the template of
// the membership event of a user of the requesting server.
func (s *Service) makeHandler(membership string) Handler {
	return func(r *http.Request, origin string) (any, error) {
		roomID, userID, err := membershipPath(r, "userId")
		if err != nil {
			return nil, err
		}
		if serverOfUser(userID) != origin {
			return nil, httpx.Forbidden("User %s does not belong to %s", userID, origin)
		}
		ctx := r.Context()
		ver, err := s.residentRoom(ctx, roomID, origin)
		if err != nil {
			return nil, err
		}
		if membership != spec.Leave {
			supported := r.URL.Query()["ver"]
			if len(supported) == 0 && membership == spec.Join {
				supported = []string{string(gomatrixserverlib.RoomVersionV1)}
			}
			if !slices.Contains(supported, string(ver)) {
				return nil, incompatibleRoomVersion(ver)
			}
		}
		pe, err := s.rooms.MembershipTemplate(ctx, roomID, userID, membership)
		if err != nil {
			return nil, err
		}
		template, err := templateJSON(pe, s.serverName)
		if err != nil {
			return nil, err
		}
		return map[string]any{"room_version": string(ver), "event": template}, nil
	}
}

// templateJSON is an event template as make_* answers it: the proto event
// with the resident server as origin and a timestamp. Rooms of versions 1
// and 2 refer to events as [event ID, hashes] pairs.
func templateJSON(pe *gomatrixserverlib.ProtoEvent, origin string) (json.RawMessage, error) {
	raw, err := json.Marshal(pe)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	m["origin"] = origin
	m["origin_server_ts"] = time.Now().UnixMilli()
	if pe.Version != nil && pe.Version.EventFormat() == gomatrixserverlib.EventFormatV1 {
		for _, k := range []string{"prev_events", "auth_events"} {
			ids, _ := m[k].([]any)
			refs := make([]any, 0, len(ids))
			for _, id := range ids {
				refs = append(refs, []any{id, map[string]string{}})
			}
			m[k] = refs
		}
	}
	return json.Marshal(m)
}

// sendAnswer builds the answer of a send_* endpoint once the event is
// accepted.
type sendAnswer func(ctx context.Context, ev *rooms.Event) (any, error)

// emptyAnswer is the {} answer of send_leave.
func emptyAnswer(context.Context, *rooms.Event) (any, error) { return httpx.Empty, nil }

// sendHandler accepts the signed membership event of a user of the
// requesting server (send_join, send_leave, send_knock) after the checks
// the spec lists: signature of the origin, type, membership, sender on the
// origin server, state_key equal to the sender. A join authorised by a
// user of this server (restricted rooms) is checked again and signed here.
func (s *Service) sendHandler(membership string, answer sendAnswer) Handler {
	return func(r *http.Request, origin string) (any, error) {
		roomID, eventID, err := membershipPath(r, "eventId")
		if err != nil {
			return nil, err
		}
		ctx := r.Context()
		ver, err := s.residentRoom(ctx, roomID, origin)
		if err != nil {
			return nil, err
		}
		raw, err := httpx.ReadBody(r)
		if err != nil {
			return nil, err
		}
		verImpl := gomatrixserverlib.MustGetRoomVersion(ver)
		pdu, err := parsePDU(verImpl, raw)
		if err != nil {
			return nil, httpx.BadJSON("%v", err)
		}
		if err := checkMembershipEvent(pdu, roomID, eventID, membership, origin); err != nil {
			return nil, err
		}
		if pdu.StateKey() == nil || *pdu.StateKey() != string(pdu.SenderID()) {
			return nil, httpx.InvalidParam("The state_key of the event must be its sender")
		}
		if err := s.verifySignedBy(ctx, verImpl, pdu, origin); err != nil {
			return nil, httpx.InvalidParam("The event is not signed by %s: %v", origin, err)
		}
		if membership == spec.Join {
			if pdu, err = s.authoriseJoin(ctx, verImpl, pdu); err != nil {
				return nil, err
			}
		}
		ev, err := s.rooms.AcceptRemoteMembership(ctx, roomID, pdu)
		if err != nil {
			return nil, err
		}
		s.broadcast(ctx, ev, origin)
		return answer(ctx, ev)
	}
}

// checkMembershipEvent checks what send_* and invite require of the event
// itself: the room and event IDs of the path, an m.room.member event with
// the expected membership, sent by a user of the origin server.
func checkMembershipEvent(pdu gomatrixserverlib.PDU, roomID, eventID, membership, origin string) error {
	switch {
	case pdu.EventID() != eventID:
		return httpx.InvalidParam("The event ID is %s, not %s", pdu.EventID(), eventID)
	case pdu.RoomID().String() != roomID:
		return httpx.InvalidParam("The event is of room %s, not %s", pdu.RoomID().String(), roomID)
	case pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil:
		return httpx.InvalidParam("The event is not an m.room.member event")
	case serverOfUser(string(pdu.SenderID())) != origin:
		return httpx.InvalidParam("The sender %s does not belong to %s", pdu.SenderID(), origin)
	}
	if m, err := pdu.Membership(); err != nil || m != membership {
		return httpx.InvalidParam("The event's membership is not %s", membership)
	}
	return nil
}

// authoriseJoin handles join_authorised_via_users_server on a join sent
// with send_join: when it names a user of this server, the join is checked
// against the room's join rules again and signed by this server; when it
// names a user of another server, that server must have signed it.
func (s *Service) authoriseJoin(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, pdu gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	via, err := verImpl.RestrictedJoinServername(pdu.Content())
	if err != nil {
		return nil, httpx.InvalidParam("Bad join_authorised_via_users_server: %v", err)
	}
	switch string(via) {
	case "":
		return pdu, nil
	case s.serverName:
		if err := s.rooms.CheckRestrictedJoin(ctx, pdu.RoomID().String(), string(pdu.SenderID())); err != nil {
			return nil, err
		}
		return s.sign(pdu), nil
	}
	if err := s.verifySignedBy(ctx, verImpl, pdu, string(via)); err != nil {
		return nil, httpx.InvalidParam("The join is not signed by its authorising server %s: %v", via, err)
	}
	return pdu, nil
}

// sign adds this server's signature to an event.
func (s *Service) sign(pdu gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	key := s.fed.own.key
	return pdu.Sign(s.serverName, gomatrixserverlib.KeyID(key.ID), key.Private)
}

// verifySignedBy checks that server signed an event (its redacted form),
// with a key valid when the event was sent where the room version
// requires it. send_* and invite check the origin's signature this way
// before this server adds its own.
func (s *Service) verifySignedBy(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, pdu gomatrixserverlib.PDU, server string) error {
	redacted, err := rooms.RedactEventJSON(verImpl, pdu.JSON())
	if err != nil {
		return err
	}
	res, err := s.fed.KeyRing.VerifyJSONs(ctx, []gomatrixserverlib.VerifyJSONRequest{{
		ServerName: spec.ServerName(server), Message: redacted, AtTS: pdu.OriginServerTS(),
		ValidityCheckingFunc: verImpl.SignatureValidityCheck,
	}})
	if err != nil {
		return err
	}
	return res[0].Error
}

// broadcast queues a membership event that a user of another server made
// through this server (send_join, send_leave, send_knock) for the other
// servers of the room, as the resident server must: the sender's stream
// carries only local users' events. A failure to queue is logged; the
// event is in the room and reaches the others with later events' prev
// events.
func (s *Service) broadcast(ctx context.Context, ev *rooms.Event, origin string) {
	servers, err := s.Sender.RoomServers(ctx, ev.RoomID().String())
	if err == nil {
		err = s.Sender.QueuePDUs(ctx, slices.DeleteFunc(servers, func(d string) bool { return d == origin }), ev.EventID())
	}
	if err != nil {
		slog.Error("federation: queueing a membership event for the room's servers", "event", ev.EventID(), "err", err)
	}
}

// membershipURI is the path of a membership endpoint for a room and a user
// or event ID, with its query.
func membershipURI(version, endpoint, roomID, id string, query url.Values) string {
	uri := "/_matrix/federation/" + version + "/" + endpoint + "/" + url.PathEscape(roomID) + "/" + url.PathEscape(id)
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	return uri
}

// makeEvent asks server for the template of userID's membership event
// (make_join, make_leave or make_knock), checks it as the spec requires —
// room, sender, state_key, type, membership — and builds the event signed
// here, with content (membership and join_authorised_via_users_server come
// from the template).
func (s *Service) makeEvent(ctx context.Context, server, roomID, userID, membership string, content map[string]any) (gomatrixserverlib.PDU, error) {
	var query url.Values
	if membership != spec.Leave {
		query = url.Values{"ver": supportedRoomVersions()}
	}
	var resp struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, membershipURI("v1", "make_"+membership, roomID, userID, query), nil, &resp); err != nil {
		return nil, err
	}
	ver := gomatrixserverlib.RoomVersion(resp.RoomVersion)
	if ver == "" {
		ver = gomatrixserverlib.RoomVersionV1
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil || !gomatrixserverlib.StableRoomVersion(ver) {
		return nil, incompatibleRoomVersion(ver)
	}
	var t struct {
		RoomID     string          `json:"room_id"`
		Sender     string          `json:"sender"`
		Type       string          `json:"type"`
		StateKey   *string         `json:"state_key"`
		Depth      int64           `json:"depth"`
		PrevEvents json.RawMessage `json:"prev_events"`
		AuthEvents json.RawMessage `json:"auth_events"`
		Content    map[string]any  `json:"content"`
	}
	if err := json.Unmarshal(resp.Event, &t); err != nil {
		return nil, fmt.Errorf("%w: bad template: %v", errBadTemplate, err)
	}
	switch {
	case t.RoomID != roomID, t.Sender != userID, t.StateKey == nil || *t.StateKey != userID, t.Type != spec.MRoomMember:
		return nil, fmt.Errorf("%w: the template is not %s's membership event in %s", errBadTemplate, userID, roomID)
	case t.Content["membership"] != membership:
		return nil, fmt.Errorf("%w: the template's membership is not %s", errBadTemplate, membership)
	}
	c := map[string]any{}
	for k, v := range content {
		c[k] = v
	}
	c["membership"] = membership
	if via, ok := t.Content["join_authorised_via_users_server"]; ok && membership == spec.Join {
		c["join_authorised_via_users_server"] = via
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	prev, err := eventIDList(t.PrevEvents)
	if err != nil {
		return nil, fmt.Errorf("%w: prev_events: %v", errBadTemplate, err)
	}
	auth, err := eventIDList(t.AuthEvents)
	if err != nil {
		return nil, fmt.Errorf("%w: auth_events: %v", errBadTemplate, err)
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID,
		PrevEvents: prev, AuthEvents: auth, Depth: t.Depth, Content: raw, Version: verImpl,
	}
	key := s.fed.own.key
	pdu, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), spec.ServerName(s.serverName), gomatrixserverlib.KeyID(key.ID), key.Private)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadTemplate, err)
	}
	return pdu, nil
}

// errBadTemplate marks a make_* answer that does not hold the template
// the spec requires.
var errBadTemplate = errors.New("bad event template")

// eventIDList reads prev_events or auth_events of a template: event IDs,
// or [event ID, hashes] pairs (room versions 1 and 2).
func eventIDList(raw json.RawMessage) ([]string, error) {
	var items []json.RawMessage
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
	}
	ids := make([]string, 0, len(items))
	for _, it := range items {
		var id string
		if json.Unmarshal(it, &id) != nil {
			var pair []json.RawMessage
			if err := json.Unmarshal(it, &pair); err != nil || len(pair) == 0 || json.Unmarshal(pair[0], &id) != nil {
				return nil, fmt.Errorf("bad event reference %s", it)
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// handshake runs step against each server in turn until one succeeds, and
// turns the failures into the error the client gets (see clientError).
func handshake[T any](servers []string, action string, step func(server string) (T, error)) (T, error) {
	var zero T
	var errs []error
	for _, server := range servers {
		out, err := step(server)
		if err == nil {
			return out, nil
		}
		slog.Info("federation: membership handshake failed", "action", action, "server", server, "err", err)
		errs = append(errs, err)
	}
	return zero, clientError(action, errs)
}

// clientError turns the failures of a handshake with other servers into
// the client's error: the first Matrix error a server answered that the
// client can act on (403 M_FORBIDDEN, 404 M_NOT_FOUND, 400
// M_INCOMPATIBLE_ROOM_VERSION …) passes through; anything else — servers
// that could not be reached, answers that break the protocol, parameter
// errors of the request this server made — is 502.
func clientError(action string, errs []error) error {
	if len(errs) == 0 {
		return httpx.NotFound("No server to %s through", action)
	}
	for _, err := range errs {
		var re *RemoteError
		var he *httpx.Error
		switch {
		case errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && passThrough(re.ErrCode):
			return httpx.NewError(re.Status, re.ErrCode, "%s", re.Message)
		case errors.As(err, &he):
			return he
		}
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Cannot %s through other servers: %s", action, strings.Join(msgs, "; "))
}

// passThrough reports whether a remote server's error code goes to the
// client as it is.
func passThrough(errcode string) bool {
	switch errcode {
	case "", "M_UNRECOGNIZED", "M_UNAUTHORIZED", "M_MISSING_PARAM", "M_INVALID_PARAM", "M_BAD_JSON", "M_NOT_JSON", "M_LIMIT_EXCEEDED":
		return false
	}
	return true
}
