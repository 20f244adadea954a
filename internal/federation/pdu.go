package federation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/rooms"
)

// Checking PDUs received from other servers (the spec's "Checks performed
// on receipt of a PDU", steps 1 to 3): the event format of the room
// version, the signatures, then the content hash — an event whose hash
// does not match is redacted. The auth checks (steps 4 to 6) are the room
// engine's (rooms.IngestEvents).

// VerifyPDU checks a PDU of a room of version ver received from another
// server — format, signatures, content hash — and returns the event to
// ingest: redacted when its content hash does not match.
func (s *Service) VerifyPDU(ctx context.Context, ver gomatrixserverlib.RoomVersion, raw json.RawMessage) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return nil, err
	}
	pdu, err := parsePDU(verImpl, raw)
	if err != nil {
		return nil, err
	}
	if err := s.verifyEventSignatures(ctx, verImpl, pdu); err != nil {
		return nil, err
	}
	return pdu, nil
}

// parsePDU checks a PDU's format and content hash.
func parsePDU(verImpl gomatrixserverlib.IRoomVersion, raw json.RawMessage) (pdu gomatrixserverlib.PDU, err error) {
	if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("invalid event: not a JSON object")
	}
	defer func() {
		// gomatrixserverlib trusts some of what it parses; a PDU that makes
		// it panic is as invalid as one it refuses.
		if r := recover(); r != nil {
			pdu, err = nil, fmt.Errorf("invalid event: %v", r)
		}
	}()
	pdu, err = verImpl.NewEventFromUntrustedJSON(raw)
	var ve gomatrixserverlib.EventValidationError
	if errors.As(err, &ve) && ve.Persistable && pdu != nil {
		err = nil // over a byte limit that older room versions tolerate
	}
	if err != nil {
		return nil, fmt.Errorf("invalid event: %w", err)
	}
	if !strings.HasPrefix(pdu.EventID(), "$") || !strings.HasPrefix(pdu.RoomID().String(), "!") {
		return nil, errors.New("invalid event: no event ID or room ID")
	}
	if pdu.Type() != spec.MRoomMember || verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV1 ||
		!bytes.Contains(raw, []byte(`"third_party_invite"`)) {
		return pdu, nil
	}
	// gomatrixserverlib's redaction drops content.third_party_invite.signed
	// of membership events in room versions 11 and later: its event ID (a
	// hash of the redacted event) and, for a bad content hash, its redacted
	// copy are then wrong. Make both again with the spec's algorithm.
	full, err := canonicalWithoutUnsigned(raw)
	if err != nil {
		return nil, err
	}
	ours, err := rooms.RedactEventJSON(verImpl, full)
	if err != nil {
		return nil, err
	}
	if lib, err := verImpl.RedactEventJSON(full); err != nil || bytes.Equal(lib, ours) {
		return pdu, nil
	}
	js := pdu.JSON()
	if pdu.Redacted() {
		js = ours
	}
	id, err := referenceEventID(verImpl, js)
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSONWithEventID(id, js, pdu.Redacted())
}

// canonicalWithoutUnsigned returns an event's canonical JSON without the
// keys a receiver drops (unsigned and the like).
func canonicalWithoutUnsigned(raw json.RawMessage) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	for _, k := range []string{"unsigned", "outlier", "destinations", "age_ts", "event_id"} {
		delete(m, k)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(b)
}

// referenceEventID computes the event ID of an event of room version 3 or
// later: the reference hash of its redacted form, without signatures and
// unsigned data.
func referenceEventID(verImpl gomatrixserverlib.IRoomVersion, js []byte) (string, error) {
	red, err := rooms.RedactEventJSON(verImpl, js)
	if err != nil {
		return "", err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(red, &m); err != nil {
		return "", err
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(b)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(canonical)
	if verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV2 {
		return "$" + base64.RawStdEncoding.EncodeToString(sum[:]), nil
	}
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// verifyEventSignatures checks the signatures a PDU needs, on its redacted
// form: the sender's server; in room versions 1 and 2 the server of the
// event ID; for an invite not made through a third-party invite, the
// invited user's server; for a restricted join, the authorising server.
// Keys must be valid at the event's origin_server_ts where the room
// version enforces it.
func (s *Service) verifyEventSignatures(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, pdu gomatrixserverlib.PDU) error {
	needed := map[string]bool{}
	sender := serverOfUser(string(pdu.SenderID()))
	if sender == "" {
		return fmt.Errorf("invalid sender %q", pdu.SenderID())
	}
	needed[sender] = true
	if verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV1 {
		_, server, err := gomatrixserverlib.SplitID('$', pdu.EventID())
		if err != nil {
			return fmt.Errorf("invalid event ID: %w", err)
		}
		needed[string(server)] = true
	}
	if pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil {
		membership, err := pdu.Membership()
		if err != nil {
			return fmt.Errorf("invalid membership event: %w", err)
		}
		var content struct {
			ThirdPartyInvite json.RawMessage `json:"third_party_invite"`
		}
		_ = json.Unmarshal(pdu.Content(), &content)
		if membership == spec.Invite && content.ThirdPartyInvite == nil {
			server := serverOfUser(*pdu.StateKey())
			if server == "" {
				return fmt.Errorf("invalid invited user %q", *pdu.StateKey())
			}
			needed[server] = true
		}
		if membership == spec.Join {
			if via, err := verImpl.RestrictedJoinServername(pdu.Content()); err == nil && via != "" {
				needed[string(via)] = true
			}
		}
	}
	redacted, err := rooms.RedactEventJSON(verImpl, pdu.JSON())
	if err != nil {
		return fmt.Errorf("redacting the event: %w", err)
	}
	reqs := make([]gomatrixserverlib.VerifyJSONRequest, 0, len(needed))
	for server := range needed {
		reqs = append(reqs, gomatrixserverlib.VerifyJSONRequest{
			ServerName: spec.ServerName(server), Message: redacted, AtTS: pdu.OriginServerTS(),
			ValidityCheckingFunc: verImpl.SignatureValidityCheck,
		})
	}
	results, err := s.fed.KeyRing.VerifyJSONs(ctx, reqs)
	if err != nil {
		return err
	}
	for i, r := range results {
		if r.Error != nil {
			return fmt.Errorf("signature of %s: %w", reqs[i].ServerName, r.Error)
		}
	}
	return nil
}

// roomOfPDU reads the room ID of a PDU without parsing the rest.
func roomOfPDU(raw json.RawMessage) string {
	var p struct {
		RoomID string `json:"room_id"`
	}
	_ = json.Unmarshal(raw, &p)
	return p.RoomID
}

// pduJSON is the JSON of stored events, as other servers receive them.
func pduJSON(evs []*rooms.Event) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		out[i] = ev.JSON()
	}
	return out
}
