package push

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// GET /notifications: the events the user was (or would have been)
// notified about, newest first. The pagination token is the stream
// position of the last notification returned.

const (
	defaultNotificationLimit = 20
	maxNotificationLimit     = 100
)

// notification is one entry of the response.
type notification struct {
	Actions    json.RawMessage   `json:"actions"`
	Event      rooms.ClientEvent `json:"event"`
	ProfileTag string            `json:"profile_tag,omitempty"`
	Read       bool              `json:"read"`
	RoomID     string            `json:"room_id"`
	TS         int64             `json:"ts"`
}

// storedNotif is a push_notifications row.
type storedNotif struct {
	pos       int64
	roomID    string
	thread    string
	highlight bool
	actions   string
}

func (s *Service) handleNotifications(r *http.Request, p *httpx.Principal) (any, error) {
	q := r.URL.Query()
	limit := defaultNotificationLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, httpx.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxNotificationLimit)
	}
	before := int64(-1)
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, httpx.InvalidParam("Invalid from token")
		}
		before = n
	}
	only := q.Get("only")
	var sqlQ strings.Builder
	args := []any{p.UserID}
	sqlQ.WriteString(`SELECT stream_pos, room_id, thread_id, highlight, actions FROM push_notifications WHERE user_id = $1`)
	if before >= 0 {
		args = append(args, before)
		fmt.Fprintf(&sqlQ, ` AND stream_pos < $%d`, len(args))
	}
	if only == "highlight" {
		sqlQ.WriteString(` AND highlight`)
	}
	args = append(args, limit)
	fmt.Fprintf(&sqlQ, ` ORDER BY stream_pos DESC LIMIT $%d`, len(args))
	ctx := r.Context()
	rows, err := s.db.Query(ctx, sqlQ.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("notifications: %w", err)
	}
	var list []storedNotif
	for rows.Next() {
		var n storedNotif
		if err := rows.Scan(&n.pos, &n.roomID, &n.thread, &n.highlight, &n.actions); err != nil {
			rows.Close()
			return nil, err
		}
		list = append(list, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := struct {
		NextToken     string         `json:"next_token,omitempty"`
		Notifications []notification `json:"notifications"`
	}{Notifications: []notification{}}
	if limit > 0 && len(list) == limit {
		out.NextToken = strconv.FormatInt(list[len(list)-1].pos, 10)
	}
	evs, err := s.eventsAt(ctx, list)
	if err != nil {
		return nil, err
	}
	reads := map[string]map[string]int64{}
	for _, n := range list {
		ev := evs[n.pos]
		if ev == nil {
			continue // the event is gone (purged room)
		}
		rr, ok := reads[n.roomID]
		if !ok {
			if rr, err = loadUserReads(ctx, s.db, p.UserID, n.roomID); err != nil {
				return nil, err
			}
			reads[n.roomID] = rr
		}
		ce, err := s.rooms.ClientEvent(ctx, ev, p.UserID, p.DeviceID)
		if err != nil {
			return nil, err
		}
		ce.RoomID = ""
		out.Notifications = append(out.Notifications, notification{
			Actions: json.RawMessage(n.actions),
			Event:   ce,
			Read:    n.pos <= max(rr[n.thread], rr[""]),
			RoomID:  n.roomID,
			TS:      int64(ev.OriginServerTS()),
		})
	}
	return out, nil
}

// eventsAt loads the events of notifications by stream position.
func (s *Service) eventsAt(ctx context.Context, list []storedNotif) (map[int64]*rooms.Event, error) {
	out := make(map[int64]*rooms.Event, len(list))
	if len(list) == 0 {
		return out, nil
	}
	args := make([]any, len(list))
	for i, n := range list {
		args[i] = n.pos
	}
	rows, err := s.db.Query(ctx, `SELECT nid, room_id FROM events WHERE stream_pos IN (`+strings.TrimSuffix(strings.TrimPrefix(placeholders(s.db.Dialect, 1, len(list)), "("), ")")+`)`, args...)
	if err != nil {
		return nil, err
	}
	byRoom := map[string][]int64{}
	for rows.Next() {
		var nid int64
		var roomID string
		if err := rows.Scan(&nid, &roomID); err != nil {
			rows.Close()
			return nil, err
		}
		byRoom[roomID] = append(byRoom[roomID], nid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for roomID, nids := range byRoom {
		ver, err := s.rooms.RoomVersion(ctx, roomID)
		if err != nil {
			return nil, err
		}
		evs, err := s.rooms.EventsByNID(ctx, ver, nids)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			out[ev.Pos] = ev
		}
	}
	return out, nil
}
