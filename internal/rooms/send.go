package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// EventSpec describes a local event to build.
type EventSpec struct {
	Sender   string
	Type     string
	StateKey *string
	// Content is marshalled to JSON (a json.RawMessage is used as is).
	Content any
	Redacts string
	// Transaction ID of the client request, for idempotency and for
	// unsigned.transaction_id. Empty for server-made events.
	TxnDevice string
	TxnID     string
}

// maxPrevEvents bounds prev_events of a local event.
const maxPrevEvents = 10

// pending is an event built but not yet persisted.
type pending struct {
	ev           *Event
	spec         *EventSpec
	redactTarget *Event // target to redact when this redaction is applied
}

// Send builds, authorises and persists local events in order, in one
// transaction. An event the auth rules refuse fails the whole call with
// 403 M_FORBIDDEN and nothing is stored.
func (e *Engine) Send(ctx context.Context, roomID string, specs ...EventSpec) ([]*Event, error) {
	unlock := e.lockRoom(roomID)
	defer unlock()
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return e.sendLocked(ctx, ri, specs, false)
}

// sendLocked is Send with the room lock held. creating is set when the
// first spec is the m.room.create event of a new room (ri is then a blank
// room of the chosen version).
func (e *Engine) sendLocked(ctx context.Context, ri *roomInfo, specs []EventSpec, creating bool) ([]*Event, error) {
	now := time.Now()
	state := ri.state
	byKey := map[StateKey]*Event{} // state built in this batch, not yet stored
	prev := ri.extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	depth := ri.maxDepth
	roomID := ri.id
	var built []*pending
	for i := range specs {
		s := &specs[i]
		content, err := marshalContent(s.Content)
		if err != nil {
			return nil, err
		}
		pe := &gomatrixserverlib.ProtoEvent{
			SenderID: s.Sender, RoomID: roomID, Type: s.Type, StateKey: s.StateKey,
			PrevEvents: append([]string{}, prev...), Depth: depth + 1, Content: content, Redacts: s.Redacts,
		}
		isCreate := s.Type == spec.MRoomCreate && s.StateKey != nil && *s.StateKey == ""
		if isCreate && ri.verImpl.DomainlessRoomIDs() {
			pe.RoomID = ""
		}
		if s.Redacts != "" && ri.verImpl.Version() != "" && redactsInContent(ri.verImpl) {
			// Room versions 11+ carry redacts inside content too.
			pe.Content = withContentField(content, "redacts", s.Redacts)
		}
		provider, err := e.authProvider(ctx, ri, state, byKey, pe)
		if err != nil {
			return nil, err
		}
		eb := ri.verImpl.NewEventBuilderFromProtoEvent(pe)
		if err := eb.AddAuthEvents(provider); err != nil {
			return nil, httpx.Forbidden("Cannot build event: %v", err)
		}
		pdu, err := eb.Build(now, e.serverName, gomatrixserverlib.KeyID(e.key.ID), e.key.Private)
		if err != nil {
			var ve gomatrixserverlib.EventValidationError
			if errors.As(err, &ve) && ve.Code == gomatrixserverlib.EventValidationTooLarge {
				return nil, httpx.TooLarge("%v", err)
			}
			return nil, httpx.BadJSON("Cannot build event: %v", err)
		}
		if isCreate {
			roomID = pdu.RoomID().String()
			ri.id = roomID
		}
		if err := gomatrixserverlib.Allowed(pdu, provider, userIDForSender); err != nil {
			return nil, httpx.Forbidden("%v", err)
		}
		ev := &Event{PDU: pdu}
		if s.TxnID != "" {
			ev.TxnID = s.TxnDevice + " " + s.TxnID
		}
		p := &pending{ev: ev, spec: s}
		if pdu.Type() == spec.MRoomRedaction {
			if p.redactTarget, err = e.redactionTarget(ctx, ri, state, byKey, pdu); err != nil {
				return nil, err
			}
		}
		built = append(built, p)
		if ev.IsState() {
			byKey[ev.Key()] = ev
		}
		prev = []string{pdu.EventID()}
		depth++
	}
	if err := e.persistLocal(ctx, ri, built, creating); err != nil {
		return nil, err
	}
	out := make([]*Event, len(built))
	for i, p := range built {
		out[i] = p.ev
	}
	if e.NewEvents != nil {
		e.NewEvents(out)
	}
	return out, nil
}

// authProvider collects the auth events a proto event needs from the state
// (events built earlier in the batch win over stored state).
func (e *Engine) authProvider(ctx context.Context, ri *roomInfo, state StateMap, byKey map[StateKey]*Event, pe *gomatrixserverlib.ProtoEvent) (*gomatrixserverlib.AuthEvents, error) {
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(pe)
	if err != nil {
		return nil, httpx.BadJSON("%v", err)
	}
	tuples := needed.Tuples()
	tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: ""})
	var pdus []gomatrixserverlib.PDU
	var nids []int64
	seen := map[StateKey]bool{}
	for _, t := range tuples {
		k := StateKey{t.EventType, t.StateKey}
		if seen[k] {
			continue
		}
		seen[k] = true
		if ev, ok := byKey[k]; ok {
			pdus = append(pdus, ev.PDU)
		} else if nid, ok := state[k]; ok {
			nids = append(nids, nid)
		}
	}
	evs, err := e.EventsByNID(ctx, ri.version, nids)
	if err != nil {
		return nil, err
	}
	for _, ev := range evs {
		pdus = append(pdus, ev.PDU)
	}
	return gomatrixserverlib.NewAuthEvents(pdus)
}

// persistLocal stores built events, their state and the room's new forward
// extremity in one transaction, then publishes the new room info.
func (e *Engine) persistLocal(ctx context.Context, ri *roomInfo, built []*pending, creating bool) error {
	newRI := *ri
	state := ri.state
	snapshot := ri.snapshot
	var newSnapshots []struct {
		id int64
		m  StateMap
	}
	err := e.db.WriteTx(ctx, func(tx *db.Tx) error {
		if creating {
			if _, err := tx.Exec(ctx, `INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)`,
				ri.id, string(ri.version), time.Now().UnixMilli()); err != nil {
				return fmt.Errorf("insert room: %w", err)
			}
		}
		for _, p := range built {
			ev := p.ev
			ev.StateBefore = snapshot
			if err := insertEvent(ctx, tx, ri.id, ev); err != nil {
				return err
			}
			if p.spec.TxnID != "" {
				if _, err := tx.Exec(ctx, `INSERT INTO transaction_ids (user_id, device_id, room_id, txn_id, event_id, created_ts) VALUES ($1, $2, $3, $4, $5, $6)`,
					p.spec.Sender, p.spec.TxnDevice, ri.id, p.spec.TxnID, ev.EventID(), time.Now().UnixMilli()); err != nil {
					return err
				}
			}
			if p.redactTarget != nil {
				if err := applyRedaction(ctx, tx, ri.verImpl, p.redactTarget, ev.EventID()); err != nil {
					return err
				}
			}
			if !ev.IsState() {
				continue
			}
			next := state.Clone()
			next[ev.Key()] = ev.NID
			id, err := e.storeSnapshot(ctx, tx, ri.id, snapshot, next, StateMap{ev.Key(): ev.NID})
			if err != nil {
				return err
			}
			if err := upsertCurrentState(ctx, tx, ri.id, ev); err != nil {
				return err
			}
			state, snapshot = next, id
			newSnapshots = append(newSnapshots, struct {
				id int64
				m  StateMap
			}{id, next})
		}
		if snapshot != ri.snapshot {
			if _, err := tx.Exec(ctx, `UPDATE rooms SET state_snapshot = $1 WHERE room_id = $2`, snapshot, ri.id); err != nil {
				return err
			}
		}
		last := built[len(built)-1].ev
		for _, id := range built[0].ev.PrevEventIDs() {
			if _, err := tx.Exec(ctx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2`, ri.id, id); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)`, ri.id, last.EventID())
		return err
	})
	if err != nil {
		if db.IsUniqueViolation(err) {
			return httpx.NewError(409, "M_UNKNOWN", "Conflicting concurrent request")
		}
		return err
	}
	for _, s := range newSnapshots {
		e.snapshots.Put(s.id, s.m)
	}
	for _, p := range built {
		e.cacheEvent(p.ev)
		if p.redactTarget != nil {
			e.events.Remove(p.redactTarget.NID)
		}
	}
	// New extremities: the ones not referenced by the first event, plus the last event.
	refd := map[string]bool{}
	for _, id := range built[0].ev.PrevEventIDs() {
		refd[id] = true
	}
	var ext []string
	for _, id := range ri.extremities {
		if !refd[id] {
			ext = append(ext, id)
		}
	}
	last := built[len(built)-1].ev
	newRI.extremities = append(ext, last.EventID())
	newRI.maxDepth = max(ri.maxDepth, last.Depth())
	newRI.snapshot, newRI.state = snapshot, state
	e.rooms.Put(ri.id, &newRI)
	return nil
}

// insertEvent stores an event with the next stream position and sets its
// NID and Pos.
func insertEvent(ctx context.Context, tx *db.Tx, roomID string, ev *Event) error {
	pos, err := db.NextStreamPos(ctx, tx)
	if err != nil {
		return err
	}
	return insertEventAt(ctx, tx, roomID, ev, pos)
}

// insertEventAt stores an event at stream position pos (0 for events
// outside the timeline: outliers, rejected and soft-failed events) and sets
// its NID and Pos.
func insertEventAt(ctx context.Context, tx *db.Tx, roomID string, ev *Event, pos int64) error {
	relatesTo, relType := relationOf(ev.Content())
	var txnID any
	if ev.TxnID != "" {
		txnID = ev.TxnID
	}
	err := tx.QueryRow(ctx, `INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, stream_pos, state_before, status, relates_to, rel_type, txn_id, json)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING nid`,
		ev.EventID(), roomID, ev.Type(), ev.StateKey(), string(ev.SenderID()), ev.Depth(), int64(ev.OriginServerTS()), pos,
		ev.StateBefore, ev.Status, relatesTo, relType, txnID, string(ev.JSON())).Scan(&ev.NID)
	if err != nil {
		return fmt.Errorf("insert event: %w", err)
	}
	ev.Pos = pos
	return nil
}

// upsertCurrentState records a state event as the room's current state at
// its key.
func upsertCurrentState(ctx context.Context, tx *db.Tx, roomID string, ev *Event) error {
	var membership any
	if ev.Type() == spec.MRoomMember {
		if m, err := ev.Membership(); err == nil {
			membership = m
		}
	}
	k := ev.Key()
	_, err := tx.Exec(ctx, `INSERT INTO current_state (room_id, type, state_key, event_nid, membership) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_nid = excluded.event_nid, membership = excluded.membership`,
		roomID, k.Type, k.StateKey, ev.NID, membership)
	return err
}

// relationOf extracts m.relates_to's event_id and rel_type from content.
func relationOf(content []byte) (any, any) {
	var c struct {
		RelatesTo *struct {
			EventID string `json:"event_id"`
			RelType string `json:"rel_type"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || c.RelatesTo == nil || c.RelatesTo.EventID == "" || c.RelatesTo.RelType == "" {
		return nil, nil
	}
	return c.RelatesTo.EventID, c.RelatesTo.RelType
}

func marshalContent(c any) ([]byte, error) {
	switch v := c.(type) {
	case nil:
		return []byte("{}"), nil
	case json.RawMessage:
		return v, nil
	case []byte:
		return v, nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, httpx.BadJSON("Bad event content: %v", err)
	}
	return b, nil
}

func withContentField(content []byte, key string, value any) []byte {
	var m map[string]any
	if json.Unmarshal(content, &m) != nil || m == nil {
		m = map[string]any{}
	}
	m[key] = value
	b, _ := json.Marshal(m)
	return b
}

// redactsInContent reports whether the room version moved "redacts" into
// the content (room versions 11 and later).
func redactsInContent(v gomatrixserverlib.IRoomVersion) bool {
	switch v.Version() {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return false
	}
	return true
}

var errNotInRoom = errors.New("not in room")
