package rooms

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// roomInfo is what the engine keeps in memory per room. A roomInfo is never
// modified once published in the cache: writers publish a new one.
type roomInfo struct {
	id          string
	version     gomatrixserverlib.RoomVersion
	verImpl     gomatrixserverlib.IRoomVersion
	snapshot    int64    // current state snapshot
	state       StateMap // current state (shared, read-only)
	extremities []string // forward extremities
	maxDepth    int64    // greatest depth among the extremities
}

// ErrRoomNotFound is returned for rooms this server does not know.
var ErrRoomNotFound = httpx.NotFound("Room not found")

// room returns the room's current info, loading it if needed.
func (e *Engine) room(ctx context.Context, roomID string) (*roomInfo, error) {
	if ri, ok := e.rooms.Get(roomID); ok {
		return ri, nil
	}
	ri := &roomInfo{id: roomID}
	var ver string
	err := e.db.QueryRow(ctx, `SELECT room_version, state_snapshot FROM rooms WHERE room_id = $1`, roomID).Scan(&ver, &ri.snapshot)
	if errors.Is(err, db.ErrNoRows) {
		return nil, ErrRoomNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load room: %w", err)
	}
	ri.version = gomatrixserverlib.RoomVersion(ver)
	if ri.verImpl, err = gomatrixserverlib.GetRoomVersion(ri.version); err != nil {
		return nil, err
	}
	if ri.state, err = e.loadSnapshot(ctx, ri.snapshot); err != nil {
		return nil, err
	}
	rows, err := e.db.Query(ctx, `SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var depth int64
		if err := rows.Scan(&id, &depth); err != nil {
			return nil, err
		}
		ri.extremities = append(ri.extremities, id)
		ri.maxDepth = max(ri.maxDepth, depth)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	e.rooms.Put(roomID, ri)
	return ri, nil
}

// RoomVersion returns the version of a known room.
func (e *Engine) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return "", err
	}
	return ri.version, nil
}

// RoomExists reports whether this server knows the room.
func (e *Engine) RoomExists(ctx context.Context, roomID string) (bool, error) {
	_, err := e.room(ctx, roomID)
	if errors.Is(err, ErrRoomNotFound) {
		return false, nil
	}
	return err == nil, err
}

const eventColumns = `nid, event_id, stream_pos, state_before, status, COALESCE(redacted_by, ''), COALESCE(txn_id, ''), json`

// scanEvent turns a row of eventColumns into an Event of the given room
// version.
func scanEvent(scan func(...any) error, ver gomatrixserverlib.RoomVersion) (*Event, error) {
	var ev Event
	var eventID, js string
	if err := scan(&ev.NID, &eventID, &ev.Pos, &ev.StateBefore, &ev.Status, &ev.RedactedBy, &ev.TxnID, &js); err != nil {
		return nil, err
	}
	impl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return nil, err
	}
	pdu, err := impl.NewEventFromTrustedJSONWithEventID(eventID, []byte(js), ev.RedactedBy != "")
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", eventID, err)
	}
	ev.PDU = pdu
	return &ev, nil
}

// EventsByNID loads events by NID, in the order asked; unknown NIDs are
// skipped.
func (e *Engine) EventsByNID(ctx context.Context, ver gomatrixserverlib.RoomVersion, nids []int64) ([]*Event, error) {
	out := make([]*Event, 0, len(nids))
	var missing []int64
	found := make(map[int64]*Event, len(nids))
	for _, nid := range nids {
		if ev, ok := e.events.Get(nid); ok {
			found[nid] = ev
		} else {
			missing = append(missing, nid)
		}
	}
	for len(missing) > 0 {
		batch := missing[:min(len(missing), 500)]
		missing = missing[len(batch):]
		args := make([]any, len(batch))
		ph := make([]string, len(batch))
		for i, nid := range batch {
			args[i] = nid
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		rows, err := e.db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE nid IN (`+strings.Join(ph, ",")+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
		for rows.Next() {
			ev, err := scanEvent(rows.Scan, ver)
			if err != nil {
				rows.Close()
				return nil, err
			}
			e.cacheEvent(ev)
			found[ev.NID] = ev
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for _, nid := range nids {
		if ev := found[nid]; ev != nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (e *Engine) cacheEvent(ev *Event) {
	e.events.Put(ev.NID, ev)
	e.eventNIDs.Put(ev.EventID(), ev.NID)
}

// EventByID loads one event of a known room by ID; nil if unknown.
func (e *Engine) EventByID(ctx context.Context, eventID string) (*Event, error) {
	if nid, ok := e.eventNIDs.Get(eventID); ok {
		if ev, ok := e.events.Get(nid); ok {
			return ev, nil
		}
	}
	var roomID string
	err := e.db.QueryRow(ctx, `SELECT room_id FROM events WHERE event_id = $1`, eventID).Scan(&roomID)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	row := e.db.QueryRow(ctx, `SELECT `+eventColumns+` FROM events WHERE event_id = $1`, eventID)
	ev, err := scanEvent(row.Scan, ri.version)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	e.cacheEvent(ev)
	return ev, nil
}

// StateEvents loads the events of a state map.
func (e *Engine) StateEvents(ctx context.Context, ver gomatrixserverlib.RoomVersion, m StateMap) ([]*Event, error) {
	nids := make([]int64, 0, len(m))
	for _, nid := range m {
		nids = append(nids, nid)
	}
	return e.EventsByNID(ctx, ver, nids)
}

// CurrentState returns the current state of a room.
func (e *Engine) CurrentState(ctx context.Context, roomID string) (StateMap, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return ri.state, nil
}

// CurrentStateEvent returns the current state event at (type, key), or nil.
func (e *Engine) CurrentStateEvent(ctx context.Context, roomID, typ, stateKey string) (*Event, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return e.stateEvent(ctx, ri, ri.state, typ, stateKey)
}

// stateEvent returns the event at (type, key) of a state map, or nil.
func (e *Engine) stateEvent(ctx context.Context, ri *roomInfo, m StateMap, typ, stateKey string) (*Event, error) {
	nid, ok := m[StateKey{typ, stateKey}]
	if !ok {
		return nil, nil
	}
	evs, err := e.EventsByNID(ctx, ri.version, []int64{nid})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}

// StateAt returns the state before an event (after it, with after set and
// a state event).
func (e *Engine) StateAt(ctx context.Context, ev *Event, after bool) (StateMap, error) {
	m, err := e.loadSnapshot(ctx, ev.StateBefore)
	if err != nil {
		return nil, err
	}
	if after && ev.IsState() && ev.Status == StatusAccepted {
		m = m.Clone()
		m[ev.Key()] = ev.NID
	}
	return m, nil
}
