package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Redactions received over federation.

// redactionArrived applies an accepted redaction to its target, or waits
// for the target to arrive.
func (x *ingestBatch) redactionArrived(ctx context.Context, it *ingestItem) error {
	targetID := it.ev.Redacts()
	if targetID == "" {
		return nil
	}
	target := x.get(targetID)
	if target == nil {
		x.newPend = append(x.newPend, pendingRedaction{targetID, it.ev.EventID()})
		return nil
	}
	return x.maybeRedact(ctx, it.ev, it.before.m, target)
}

// targetArrived applies stored redactions that were waiting for this event.
func (x *ingestBatch) targetArrived(ctx context.Context, it *ingestItem) error {
	reds := x.pending[it.ev.EventID()]
	if len(reds) == 0 {
		return nil
	}
	if err := x.loadIDs(ctx, reds); err != nil {
		return err
	}
	for _, id := range reds {
		red := x.get(id)
		if red == nil || red.Status != StatusAccepted || !hasState(red) {
			continue
		}
		before, err := x.e.loadSnapshot(ctx, red.StateBefore)
		if err != nil {
			return err
		}
		if err := x.maybeRedact(ctx, red, before, it.ev); err != nil {
			return err
		}
	}
	return nil
}

// maybeRedact redacts target if the redaction may (the room version's
// "handling redactions" rules: same server as the target's sender, or the
// redact power level at the redaction).
func (x *ingestBatch) maybeRedact(ctx context.Context, red *Event, before StateMap, target *Event) error {
	if target.RedactedBy != "" || target.RoomID().String() != red.RoomID().String() {
		return nil
	}
	allowed := sameServer(red.SenderID(), target.SenderID())
	switch x.ri.version {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2:
		allowed = true // the auth rules already checked it
	}
	if !allowed {
		level, redactLevel, err := x.powerAtState(ctx, before, string(red.SenderID()))
		if err != nil {
			return err
		}
		allowed = level >= redactLevel
	}
	if !allowed {
		return nil
	}
	js, err := redactEventJSON(x.ri.verImpl, target.JSON())
	if err != nil {
		return fmt.Errorf("redact %s: %w", target.EventID(), err)
	}
	pdu, err := x.ri.verImpl.NewEventFromTrustedJSONWithEventID(target.EventID(), js, true)
	if err != nil {
		return fmt.Errorf("redact %s: %w", target.EventID(), err)
	}
	if it := x.byEventID[target.EventID()]; it != nil && it.ev == target {
		target.PDU, target.RedactedBy = pdu, red.EventID()
		return nil
	}
	x.dbRedacts = append(x.dbRedacts, dbRedaction{target, red.EventID()})
	redacted := *target
	redacted.PDU, redacted.RedactedBy = pdu, red.EventID()
	x.byID[target.EventID()] = &redacted
	x.byNID[target.NID] = &redacted
	return nil
}

// redactEventJSON applies the room version's redaction algorithm. It
// corrects gomatrixserverlib for room versions 11 and later, whose
// algorithm keeps content.third_party_invite.signed of m.room.member
// events: the library drops it, which would make our redacted copies (and
// the hashes and signatures checked on them) differ from other servers'.
func redactEventJSON(v gomatrixserverlib.IRoomVersion, js []byte) ([]byte, error) {
	out, err := v.RedactEventJSON(js)
	if err != nil || !redactsInContent(v) {
		return out, err
	}
	var ev struct {
		Type    string `json:"type"`
		Content struct {
			ThirdPartyInvite *struct {
				Signed json.RawMessage `json:"signed"`
			} `json:"third_party_invite"`
		} `json:"content"`
	}
	if json.Unmarshal(js, &ev) != nil || ev.Type != spec.MRoomMember || ev.Content.ThirdPartyInvite == nil || ev.Content.ThirdPartyInvite.Signed == nil {
		return out, nil
	}
	var top, content map[string]json.RawMessage
	if err := json.Unmarshal(out, &top); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(top["content"], &content); err != nil || content == nil {
		content = map[string]json.RawMessage{}
	}
	content["third_party_invite"], _ = json.Marshal(map[string]json.RawMessage{"signed": ev.Content.ThirdPartyInvite.Signed})
	top["content"], _ = json.Marshal(content)
	return json.Marshal(top)
}

// sameServer reports whether two users are on the same server.
func sameServer(a, b spec.SenderID) bool {
	_, da, _ := strings.Cut(string(a), ":")
	_, db, _ := strings.Cut(string(b), ":")
	return da == db
}

// powerAtState returns a user's power level and the redact level in a
// state.
func (x *ingestBatch) powerAtState(ctx context.Context, state StateMap, userID string) (level, redact int64, err error) {
	creators, err := x.creators(ctx)
	if err != nil {
		return 0, 0, err
	}
	var pdus []gomatrixserverlib.PDU
	for _, k := range []StateKey{{spec.MRoomCreate, ""}, {spec.MRoomPowerLevels, ""}} {
		if nid, ok := state[k]; ok {
			ev, err := x.nid(ctx, nid)
			if err != nil {
				return 0, 0, err
			}
			if ev != nil {
				pdus = append(pdus, ev.PDU)
			}
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return 0, 0, err
	}
	creator := ""
	if c, _ := provider.Create(); c != nil {
		creator = string(c.SenderID())
	}
	pl, err := gomatrixserverlib.NewPowerLevelContentFromAuthEvents(provider, creator)
	if err != nil {
		return 0, 0, err
	}
	if creators[userID] {
		return gomatrixserverlib.CreatorPowerLevel, pl.Redact, nil
	}
	return pl.UserLevel(spec.SenderID(userID)), pl.Redact, nil
}
