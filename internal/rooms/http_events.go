package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

func (e *Engine) eventRoutes(rt *httpx.Router) {
	rt.AuthedGuestOK("PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}", e.handleSend)
	rt.Authed("PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}", e.handlePutState)
	rt.Authed("PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}", e.handlePutState)
	rt.Authed("PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{$}", e.handlePutState)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}", e.handleGetState)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}", e.handleGetState)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{$}", e.handleGetState)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/state", e.handleGetAllState)
	rt.AuthedGuestOK("GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}", e.handleGetEvent)
	rt.Authed("PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}", e.handleRedact)
}

// txnEvent returns the event ID a previous request with the same
// transaction ID produced, or "".
func (e *Engine) txnEvent(ctx context.Context, p *httpx.Principal, roomID, txnID string) (string, error) {
	var eventID string
	err := e.db.QueryRow(ctx, `SELECT event_id FROM transaction_ids WHERE user_id = $1 AND device_id = $2 AND room_id = $3 AND txn_id = $4`,
		p.UserID, p.DeviceID, roomID, txnID).Scan(&eventID)
	if errors.Is(err, db.ErrNoRows) {
		return "", nil
	}
	return eventID, err
}

// sendIdempotent sends one event unless the transaction ID was already
// used by this device, and answers {"event_id"}.
func (e *Engine) sendIdempotent(ctx context.Context, roomID string, p *httpx.Principal, txnID string, s EventSpec) (any, error) {
	if id, err := e.txnEvent(ctx, p, roomID, txnID); err != nil || id != "" {
		return map[string]string{"event_id": id}, err
	}
	s.TxnDevice, s.TxnID = p.DeviceID, txnID
	evs, err := e.Send(ctx, roomID, s)
	if err != nil {
		// A concurrent request with the same transaction ID won the race.
		if id, err2 := e.txnEvent(ctx, p, roomID, txnID); err2 == nil && id != "" {
			return map[string]string{"event_id": id}, nil
		}
		return nil, err
	}
	return map[string]string{"event_id": evs[0].EventID()}, nil
}

// decodeContent reads a request body that must be a JSON object.
func decodeContent(r *http.Request) (json.RawMessage, error) {
	var content map[string]json.RawMessage
	raw, err := httpx.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if err := httpx.UnmarshalJSON(raw, &content); err != nil {
		return nil, err
	}
	return raw, nil
}

func (e *Engine) handleSend(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	content, err := decodeContent(r)
	if err != nil {
		return nil, err
	}
	if err := e.checkSendLimit(p.UserID); err != nil {
		return nil, err
	}
	typ := r.PathValue("eventType")
	if typ == spec.MRoomRedaction {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(content, &c)
		return e.sendIdempotent(r.Context(), roomID, p, r.PathValue("txnId"), EventSpec{Sender: p.UserID, Type: typ, Content: content, Redacts: c.Redacts})
	}
	return e.sendIdempotent(r.Context(), roomID, p, r.PathValue("txnId"), EventSpec{Sender: p.UserID, Type: typ, Content: content})
}

func (e *Engine) handlePutState(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	content, err := decodeContent(r)
	if err != nil {
		return nil, err
	}
	typ, stateKey := r.PathValue("eventType"), r.PathValue("stateKey")
	if typ == spec.MRoomMember {
		var c struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(content, &c) != nil || c.Membership == "" {
			return nil, httpx.BadJSON("m.room.member content needs a membership")
		}
	}
	if typ == spec.MRoomCreate {
		return nil, httpx.BadJSON("A room's m.room.create event cannot be replaced")
	}
	if typ == spec.MRoomPowerLevels {
		if err := e.checkCreatorsNotListed(r.Context(), roomID, content); err != nil {
			return nil, err
		}
	}
	if typ == spec.MRoomCanonicalAlias {
		if err := e.checkCanonicalAlias(r.Context(), roomID, content); err != nil {
			return nil, err
		}
	}
	// Re-sending identical state is a no-op that returns the current event.
	if cur, err := e.CurrentStateEvent(r.Context(), roomID, typ, stateKey); err != nil {
		return nil, err
	} else if cur != nil && cur.SenderID() == spec.SenderID(p.UserID) && jsonEqual(cur.Content(), content) {
		return map[string]string{"event_id": cur.EventID()}, nil
	}
	evs, err := e.Send(r.Context(), roomID, stateSpec(p.UserID, typ, stateKey, json.RawMessage(content)))
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": evs[0].EventID()}, nil
}

// jsonEqual compares two JSON documents by value.
func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return string(ja) == string(jb)
}

// readableState returns the state a user may read: the current state when
// they are joined (or the room is world-readable), the state at their leave
// when they left, else 403.
func (e *Engine) readableState(ctx context.Context, roomID, userID string) (*roomInfo, StateMap, error) {
	ri, err := e.room(ctx, roomID)
	if errors.Is(err, ErrRoomNotFound) {
		return nil, nil, httpx.Forbidden("You are not in this room")
	}
	if err != nil {
		return nil, nil, err
	}
	mem, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomMember, userID)
	if err != nil {
		return nil, nil, err
	}
	if mem != nil {
		m, _ := mem.Membership()
		switch m {
		case spec.Join:
			return ri, ri.state, nil
		case spec.Leave, spec.Ban:
			// The state as it was when they left, if they had been joined.
			before, err := e.loadSnapshot(ctx, mem.StateBefore)
			if err != nil {
				return nil, nil, err
			}
			if prev, err := e.stateEvent(ctx, ri, before, spec.MRoomMember, userID); err == nil && prev != nil {
				if pm, _ := prev.Membership(); pm == spec.Join {
					after := before.Clone()
					after[mem.Key()] = mem.NID
					return ri, after, nil
				}
			}
		}
	}
	if hv, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomHistoryVisibility, ""); err == nil && hv != nil {
		if h, _ := hv.HistoryVisibility(); string(h) == VisWorldReadable {
			return ri, ri.state, nil
		}
	}
	return nil, nil, httpx.Forbidden("You are not in this room")
}

func (e *Engine) handleGetState(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ri, state, err := e.readableState(r.Context(), roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	ev, err := e.stateEvent(r.Context(), ri, state, r.PathValue("eventType"), r.PathValue("stateKey"))
	if err != nil {
		return nil, err
	}
	if ev == nil {
		return nil, httpx.NotFound("Event not found")
	}
	if r.URL.Query().Get("format") == "event" {
		return e.ClientEvent(r.Context(), ev, p.UserID, p.DeviceID)
	}
	return json.RawMessage(ev.Content()), nil
}

func (e *Engine) handleGetAllState(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ri, state, err := e.readableState(r.Context(), roomID, p.UserID)
	if err != nil {
		return nil, err
	}
	evs, err := e.StateEvents(r.Context(), ri.version, state)
	if err != nil {
		return nil, err
	}
	return e.ClientEvents(r.Context(), evs, p.UserID, p.DeviceID)
}

func (e *Engine) handleGetEvent(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ev, err := e.EventByID(r.Context(), r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	if ev == nil || ev.RoomID().String() != roomID || ev.Status == StatusOutlier {
		return nil, httpx.NotFound("Event not found")
	}
	ok, err := e.NewVisibility(p.UserID).CanSee(r.Context(), ev)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, httpx.NotFound("Event not found")
	}
	ce, err := e.ClientEvent(r.Context(), ev, p.UserID, p.DeviceID)
	if err != nil {
		return nil, err
	}
	ces := []ClientEvent{ce}
	if err := e.BundleAggregations(r.Context(), p.UserID, p.DeviceID, []*Event{ev}, ces); err != nil {
		return nil, err
	}
	return ces[0], nil
}

func (e *Engine) handleRedact(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	redacts := r.PathValue("eventId")
	if !validSigilID(redacts, '$') {
		return nil, httpx.InvalidParam("Invalid event ID %q", redacts)
	}
	var body struct {
		Reason string `json:"reason,omitempty"`
	}
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	content := map[string]any{}
	if body.Reason != "" {
		content["reason"] = body.Reason
	}
	return e.sendIdempotent(r.Context(), roomID, p, r.PathValue("txnId"), EventSpec{
		Sender: p.UserID, Type: spec.MRoomRedaction, Content: content, Redacts: redacts,
	})
}

// checkCanonicalAlias validates m.room.canonical_alias content: every alias
// must be well-formed and, when local, point at this room.
func (e *Engine) checkCanonicalAlias(ctx context.Context, roomID string, content []byte) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return httpx.InvalidParam("Bad m.room.canonical_alias content: %v", err)
	}
	aliases := c.AltAliases
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	for _, a := range aliases {
		_, server, err := ParseAlias(a)
		if err != nil {
			return err
		}
		if server != string(e.serverName) {
			continue
		}
		id, err := e.ResolveAlias(ctx, a)
		if err != nil {
			return err
		}
		if id != roomID {
			return httpx.NewError(http.StatusBadRequest, "M_BAD_ALIAS", "Alias %s does not point to this room", a)
		}
	}
	return nil
}

// checkCreatorsNotListed refuses power levels that list a privileged
// creator in users (room versions 12+): 400, not the auth rules' 403, as
// the spec's client rules for v12 ask.
func (e *Engine) checkCreatorsNotListed(ctx context.Context, roomID string, content []byte) error {
	ri, err := e.room(ctx, roomID)
	if err != nil || !ri.verImpl.PrivilegedCreators() {
		return nil
	}
	var pl struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(content, &pl) != nil {
		return nil
	}
	p, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return err
	}
	for u := range pl.Users {
		if p.creators[u] {
			return httpx.BadJSON("%s is a creator of this room and cannot be listed in power levels", u)
		}
	}
	return nil
}
