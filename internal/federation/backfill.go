package federation

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Backfill: when a client pages back past the start of the history this
// server has (a room joined over federation starts at the join), the room
// engine calls Backfill, which asks a server of the room for the events
// before the earliest one here (/backfill) and ingests them as history
// (rooms.AsBackfill): they take stream positions below the room's others,
// so /messages goes on through them.

const (
	// backfillLimit is the number of events asked for per backfill.
	backfillLimit = 50
	// backfillServers bounds the servers tried for one backfill.
	backfillServers = 3
)

// Backfill fetches events from before the earliest event this server has
// of a room from the room's other servers and ingests them. It reports
// whether any was added; false when the room's start is reached or no
// server answered.
func (s *Service) Backfill(ctx context.Context, roomID string) (bool, error) {
	v, _ := s.backfills.LoadOrStore(roomID, &gosync.Mutex{})
	mu := v.(*gosync.Mutex)
	mu.Lock()
	defer mu.Unlock()
	earliest, missing, err := s.backwardExtremity(ctx, roomID)
	if err != nil || len(missing) == 0 {
		return false, err
	}
	// Where nothing came back lately, do not ask again at every page.
	key := strings.Join(missing, ",")
	if v, ok := s.backfillMisses.Load(roomID); ok {
		if m := v.(backfillMiss); m.key == key && time.Since(m.at) < backfillRetry {
			return false, nil
		}
	}
	added, err := s.backfillFrom(ctx, roomID, earliest, missing)
	if err == nil && !added {
		s.backfillMisses.Store(roomID, backfillMiss{key: key, at: time.Now()})
	}
	return added, err
}

// backfillMiss records a backfill that added nothing.
type backfillMiss struct {
	key string // the prev events asked for
	at  time.Time
}

// backfillRetry is how long a backfill that added nothing is not tried
// again from the same events.
const backfillRetry = time.Minute

// backfillFrom asks the room's servers for the events before missing, the
// unknown prev events of earliest.
func (s *Service) backfillFrom(ctx context.Context, roomID string, earliest *rooms.Event, missing []string) (bool, error) {
	servers, err := s.Sender.RoomServers(ctx, roomID)
	if err != nil {
		return false, err
	}
	// The sender of the earliest event's server is most likely to have
	// what came before it.
	if first := serverOfUser(string(earliest.SenderID())); slices.Contains(servers, first) {
		servers = append([]string{first}, slices.DeleteFunc(servers, func(s string) bool { return s == first })...)
	}
	ver, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return false, err
	}
	q := url.Values{"v": missing, "limit": {strconv.Itoa(backfillLimit)}}
	for i, server := range servers {
		if i == backfillServers {
			break
		}
		var resp struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/backfill/"+url.PathEscape(roomID)+"?"+q.Encode(), nil, &resp)
		if err != nil {
			slog.Info("federation: backfill failed", "server", server, "room", roomID, "err", err)
			continue
		}
		pdus := s.verifyRemotePDUs(ctx, roomID, ver, resp.PDUs)
		if len(pdus) == 0 {
			continue
		}
		results, err := s.ingest(ctx, roomID, server, pdus, true)
		if err != nil {
			return false, err
		}
		for _, r := range results {
			if r.Stored && !r.Known && r.Status == rooms.StatusAccepted {
				return true, nil
			}
		}
	}
	return false, nil
}

// backwardExtremity returns the room's earliest accepted event and those
// of its prev_events this server does not have in its timeline: where
// history from other servers would attach.
func (s *Service) backwardExtremity(ctx context.Context, roomID string) (*rooms.Event, []string, error) {
	var eventID string
	err := s.db.QueryRow(ctx, `SELECT event_id FROM events WHERE room_id = $1 AND status = $2 ORDER BY stream_pos LIMIT 1`,
		roomID, rooms.StatusAccepted).Scan(&eventID)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil, nil // no accepted event: nothing to attach to
	}
	if err != nil {
		return nil, nil, err
	}
	ev, err := s.rooms.EventByID(ctx, eventID)
	if err != nil || ev == nil {
		return nil, nil, err
	}
	var missing []string
	for _, prev := range ev.PrevEventIDs() {
		p, err := s.rooms.EventByID(ctx, prev)
		if err != nil {
			return nil, nil, err
		}
		// The create event starts the room: known as an outlier since the
		// join, there is nothing before it.
		if p == nil || (p.Status == rooms.StatusOutlier && p.Type() != spec.MRoomCreate) {
			missing = append(missing, prev)
		}
	}
	return ev, missing, nil
}
