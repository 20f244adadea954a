package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Delivery to push gateways (push gateway API, POST /_matrix/push/v1/notify).
// Each pusher has a delivery loop that sends the user's notifications after
// the pusher's last_pos, one request each, and moves last_pos after each
// success; failures are retried with exponential backoff. Rejected pushkeys
// remove their pusher.

const (
	// deliverBatch is how many notifications a loop reads at once.
	deliverBatch = 50
	// firstRetry and lastRetry bound the backoff between attempts.
	firstRetry = time.Second
	lastRetry  = 10 * time.Minute
	// giveUpAfter drops a notification a gateway has refused this long.
	giveUpAfter = 24 * time.Hour
)

type pusherKey struct{ user, appID, pushkey string }

// gateway runs the delivery loops.
type gateway struct {
	s      *Service
	client *http.Client

	mu    sync.Mutex
	ctx   context.Context // nil until start
	loops map[pusherKey]*pusherLoop
	wg    sync.WaitGroup
}

// pusherLoop is one pusher's delivery loop.
type pusherLoop struct {
	poke  chan struct{} // capacity 1: work may be pending
	badge atomic.Bool   // the badge count changed: send it when idle
}

func newGateway(s *Service) *gateway {
	// Gateways are chosen by clients: connect only to public addresses
	// unless push.allow_private says otherwise.
	dialer := federation.AddrPolicy{AllowPrivate: s.cfg.AllowPrivate}.Dialer()
	return &gateway{
		s:     s,
		loops: map[pusherKey]*pusherLoop{},
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext:           dialer.DialContext,
				TLSHandshakeTimeout:   10 * time.Second,
				ResponseHeaderTimeout: 20 * time.Second,
				IdleConnTimeout:       90 * time.Second,
				MaxIdleConnsPerHost:   4,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// start runs a loop for every stored pusher (they resume from last_pos).
func (g *gateway) start(ctx context.Context) error {
	g.mu.Lock()
	g.ctx = ctx
	g.mu.Unlock()
	rows, err := g.s.db.Query(ctx, `SELECT user_id, app_id, pushkey FROM pushers`)
	if err != nil {
		return fmt.Errorf("pushers: %w", err)
	}
	var keys []pusherKey
	for rows.Next() {
		var k pusherKey
		if err := rows.Scan(&k.user, &k.appID, &k.pushkey); err != nil {
			rows.Close()
			return err
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		g.ensure(k)
	}
	return nil
}

// wait waits for the loops to end (after the start context is cancelled).
func (g *gateway) wait() { g.wg.Wait() }

// ensure pokes the pusher's loop, starting it if needed.
func (g *gateway) ensure(k pusherKey) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx == nil || g.ctx.Err() != nil {
		return
	}
	l := g.loops[k]
	if l == nil {
		l = &pusherLoop{poke: make(chan struct{}, 1)}
		g.loops[k] = l
		g.wg.Add(1)
		go g.run(g.ctx, k, l)
	}
	l.pokeNow()
}

func (l *pusherLoop) pokeNow() {
	select {
	case l.poke <- struct{}{}:
	default:
	}
}

// poke wakes the loops of users with new notifications.
func (g *gateway) poke(users map[string]bool) {
	if len(users) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, l := range g.loops {
		if users[k.user] {
			l.pokeNow()
		}
	}
}

// badge marks a user's badge count as changed.
func (g *gateway) badge(userID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, l := range g.loops {
		if k.user == userID {
			l.badge.Store(true)
			l.pokeNow()
		}
	}
}

// run is a pusher's delivery loop. It ends when the pusher is gone or ctx
// ends.
func (g *gateway) run(ctx context.Context, k pusherKey, l *pusherLoop) {
	defer g.wg.Done()
	defer func() {
		if ctx.Err() != nil {
			g.mu.Lock()
			if g.loops[k] == l {
				delete(g.loops, k)
			}
			g.mu.Unlock()
		}
	}()
	retry := firstRetry
	var failingSince time.Time
	for {
		select {
		case <-l.poke:
		case <-time.After(time.Hour): // a safety net: look anyway
		case <-ctx.Done():
			return
		}
		for {
			more, gone, err := g.round(ctx, k, l, &failingSince)
			if ctx.Err() != nil {
				return
			}
			if gone {
				if g.retire(k, l) {
					return
				}
				break
			}
			if err != nil {
				logErr("push gateway", err, "user", k.user, "app_id", k.appID, "retry_in", retry)
				select {
				case <-time.After(retry):
				case <-ctx.Done():
					return
				}
				retry = min(retry*2, lastRetry)
				continue
			}
			retry, failingSince = firstRetry, time.Time{}
			if !more {
				break
			}
		}
	}
}

// retire removes an ended loop from the map, unless a poke arrived
// meanwhile (the pusher may have been created again): then it goes on.
func (g *gateway) retire(k pusherKey, l *pusherLoop) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(l.poke) > 0 {
		return false
	}
	if g.loops[k] == l {
		delete(g.loops, k)
	}
	return true
}

// round delivers the pending notifications of a pusher, up to
// deliverBatch. It reports whether more may be pending and whether the
// pusher is gone.
func (g *gateway) round(ctx context.Context, k pusherKey, l *pusherLoop, failingSince *time.Time) (more, gone bool, err error) {
	s := g.s
	list, err := s.pushersWhere(ctx, `user_id = $1 AND app_id = $2 AND pushkey = $3`, k.user, k.appID, k.pushkey)
	if err != nil || len(list) == 0 {
		return false, err == nil, err
	}
	p := list[0]
	rows, err := s.db.Query(ctx, `SELECT stream_pos, room_id, thread_id, highlight, actions FROM push_notifications
		WHERE user_id = $1 AND stream_pos > $2 ORDER BY stream_pos LIMIT $3`, k.user, p.lastPos, deliverBatch)
	if err != nil {
		return false, false, err
	}
	var pending []storedNotif
	for rows.Next() {
		var n storedNotif
		if err := rows.Scan(&n.pos, &n.roomID, &n.thread, &n.highlight, &n.actions); err != nil {
			rows.Close()
			return false, false, err
		}
		pending = append(pending, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, false, err
	}
	if len(pending) == 0 {
		if l.badge.Swap(false) {
			if _, err := g.sendBadge(ctx, p); err != nil {
				logErr("push gateway badge", err, "user", k.user)
			}
		}
		return false, false, nil
	}
	evs, err := s.eventsAt(ctx, pending)
	if err != nil {
		return false, false, err
	}
	reads := map[string]map[string]int64{}
	for _, n := range pending {
		rr, ok := reads[n.roomID]
		if !ok {
			if rr, err = loadUserReads(ctx, s.db, k.user, n.roomID); err != nil {
				return false, false, err
			}
			reads[n.roomID] = rr
		}
		// An event the user has read meanwhile, or one whose event is
		// gone, is not pushed.
		if ev := evs[n.pos]; ev != nil && n.pos > max(rr[n.thread], rr[""]) {
			rejected, err := g.sendEvent(ctx, p, n, ev)
			if err != nil {
				if failingSince.IsZero() {
					*failingSince = time.Now()
				}
				if time.Since(*failingSince) < giveUpAfter {
					return false, false, err
				}
				logErr("push gateway: giving up on a notification", err, "user", k.user, "event", ev.EventID())
			}
			if slices.Contains(rejected, p.Pushkey) {
				err := s.deletePushers(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, k.user, k.appID, k.pushkey)
				return false, err == nil, err
			}
		}
		*failingSince = time.Time{}
		if _, err := s.db.Exec(ctx, `UPDATE pushers SET last_pos = $1 WHERE user_id = $2 AND app_id = $3 AND pushkey = $4 AND last_pos < $1`,
			n.pos, k.user, k.appID, k.pushkey); err != nil {
			return false, false, err
		}
	}
	return len(pending) == deliverBatch, false, nil
}

// gwNotification is the notification object of a /notify request.
type gwNotification struct {
	EventID           string          `json:"event_id,omitempty"`
	RoomID            string          `json:"room_id,omitempty"`
	Type              string          `json:"type,omitempty"`
	Sender            string          `json:"sender,omitempty"`
	SenderDisplayName string          `json:"sender_display_name,omitempty"`
	RoomName          string          `json:"room_name,omitempty"`
	RoomAlias         string          `json:"room_alias,omitempty"`
	UserIsTarget      bool            `json:"user_is_target,omitempty"`
	Prio              string          `json:"prio,omitempty"`
	Content           json.RawMessage `json:"content,omitempty"`
	Counts            gwCounts        `json:"counts"`
	Devices           []gwDevice      `json:"devices"`
}

// gwCounts are the badge counts; zero counts are omitted.
type gwCounts struct {
	Unread int64 `json:"unread,omitempty"`
}

// gwDevice is the pusher a notification is for.
type gwDevice struct {
	AppID     string                     `json:"app_id"`
	Pushkey   string                     `json:"pushkey"`
	PushkeyTS int64                      `json:"pushkey_ts,omitempty"`
	Data      json.RawMessage            `json:"data,omitempty"`
	Tweaks    map[string]json.RawMessage `json:"tweaks,omitempty"`
}

// device builds the devices entry of a pusher: its data without the url.
func (p *storedPusher) device(tweaks map[string]json.RawMessage) gwDevice {
	d := gwDevice{AppID: p.AppID, Pushkey: p.Pushkey, PushkeyTS: p.pushkeyTS, Tweaks: tweaks}
	var data map[string]json.RawMessage
	if json.Unmarshal(p.Data, &data) == nil {
		delete(data, "url")
		if len(data) > 0 {
			d.Data, _ = json.Marshal(data)
		}
	}
	return d
}

// url is the pusher's gateway URL.
func (p *storedPusher) url() string {
	var data struct {
		URL string `json:"url"`
	}
	_ = json.Unmarshal(p.Data, &data)
	return data.URL
}

// format is the pusher's data.format.
func (p *storedPusher) format() string {
	var data struct {
		Format string `json:"format"`
	}
	_ = json.Unmarshal(p.Data, &data)
	return data.Format
}

// sendEvent pushes one notification and returns the rejected pushkeys.
func (g *gateway) sendEvent(ctx context.Context, p *storedPusher, n storedNotif, ev *rooms.Event) ([]string, error) {
	s := g.s
	unread, err := s.totalUnread(ctx, p.userID)
	if err != nil {
		return nil, err
	}
	acts := compileActions(json.RawMessage(n.actions))
	gn := gwNotification{EventID: ev.EventID(), RoomID: n.roomID, Counts: gwCounts{Unread: unread},
		Devices: []gwDevice{p.device(acts.tweaks)}, Prio: "low"}
	if ev.Type() == "m.room.encrypted" || acts.highlight || acts.tweaks["sound"] != nil {
		gn.Prio = "high"
	}
	if p.format() != "event_id_only" {
		sender := string(ev.SenderID())
		gn.Type, gn.Sender = ev.Type(), sender
		gn.UserIsTarget = ev.StateKey() != nil && *ev.StateKey() == p.userID
		if c := ev.Content(); len(c) > 0 && string(c) != "{}" {
			gn.Content = json.RawMessage(c)
		}
		if gn.SenderDisplayName, err = g.stateString(ctx, n.roomID, spec.MRoomMember, sender, "displayname"); err != nil {
			return nil, err
		}
		if gn.RoomName, err = g.stateString(ctx, n.roomID, spec.MRoomName, "", "name"); err != nil {
			return nil, err
		}
		if gn.RoomAlias, err = g.stateString(ctx, n.roomID, spec.MRoomCanonicalAlias, "", "alias"); err != nil {
			return nil, err
		}
	}
	return g.post(ctx, p.url(), gn)
}

// sendBadge pushes the user's badge count alone.
func (g *gateway) sendBadge(ctx context.Context, p *storedPusher) ([]string, error) {
	unread, err := g.s.totalUnread(ctx, p.userID)
	if err != nil {
		return nil, err
	}
	return g.post(ctx, p.url(), gwNotification{Counts: gwCounts{Unread: unread}, Devices: []gwDevice{p.device(nil)}})
}

// stateString reads a string field of a current state event's content.
func (g *gateway) stateString(ctx context.Context, roomID, typ, key, field string) (string, error) {
	ev, err := g.s.rooms.CurrentStateEvent(ctx, roomID, typ, key)
	if err != nil || ev == nil {
		return "", err
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(ev.Content(), &c) != nil {
		return "", nil
	}
	var v string
	_ = json.Unmarshal(c[field], &v)
	return v, nil
}

// post sends a /notify request. Any answer but a 2xx is a failure.
func (g *gateway) post(ctx context.Context, url string, n gwNotification) ([]string, error) {
	body, err := json.Marshal(map[string]gwNotification{"notification": n})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("push gateway %s answered %d", url, resp.StatusCode)
	}
	var out struct {
		Rejected []string `json:"rejected"`
	}
	_ = json.Unmarshal(raw, &out)
	return out.Rejected, nil
}
