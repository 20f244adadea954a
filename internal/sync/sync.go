package sync

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/httpx"
)

// maxTimeout caps the long-poll timeout a client may ask for.
const maxTimeout = 5 * time.Minute

// Request is one /sync request, parsed.
type Request struct {
	UserID, DeviceID string
	// Since is the client's token; Initial is set when it sent none.
	Since   Token
	Initial bool
	// To is the stream position this response covers up to.
	To         int64
	Typing     int64
	Filter     *accounts.Filter
	FullState  bool
	StateAfter bool

	// Filled while building a response:
	ignored     map[string]bool // users the syncing user ignores
	newlyJoined []string        // rooms joined since the token
}

// Response is the body of a /sync response.
type Response struct {
	NextBatch              string           `json:"next_batch"`
	Rooms                  *RoomsSection    `json:"rooms,omitempty"`
	Presence               *EventList       `json:"presence,omitempty"`
	AccountData            *EventList       `json:"account_data,omitempty"`
	ToDevice               *EventList       `json:"to_device,omitempty"`
	DeviceLists            *DeviceLists     `json:"device_lists,omitempty"`
	DeviceOneTimeKeysCount map[string]int64 `json:"device_one_time_keys_count,omitempty"`
	DeviceUnusedFallback   []string         `json:"device_unused_fallback_key_types,omitzero"` // required when E2EE sets it, even empty
}

// EventList is {"events": [...]}.
type EventList struct {
	Events []json.RawMessage `json:"events"`
}

// DeviceLists is the device_lists section.
type DeviceLists struct {
	Changed []string `json:"changed,omitempty"`
	Left    []string `json:"left,omitempty"`
}

// empty reports whether the response carries nothing new.
func (r *Response) empty() bool {
	return r.Rooms == nil && r.Presence == nil && r.AccountData == nil && r.ToDevice == nil &&
		r.DeviceLists == nil
}

func (s *Service) handleSync(r *http.Request, p *httpx.Principal) (any, error) {
	q := r.URL.Query()
	rq := &Request{UserID: p.UserID, DeviceID: p.DeviceID, Initial: true}
	if since := q.Get("since"); since != "" {
		t, err := ParseToken(since)
		if err != nil {
			return nil, err
		}
		rq.Since, rq.Initial = t, false
	}
	var timeout time.Duration
	if v := q.Get("timeout"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, httpx.InvalidParam("timeout must be a non-negative number of milliseconds")
		}
		timeout = min(time.Duration(ms)*time.Millisecond, maxTimeout)
	}
	var err error
	if rq.FullState, err = httpx.QueryBool(r, "full_state", false); err != nil {
		return nil, err
	}
	if rq.StateAfter, err = httpx.QueryBool(r, "use_state_after", false); err != nil {
		return nil, err
	}
	if rq.Filter, err = s.parseFilter(r.Context(), p.UserID, q.Get("filter")); err != nil {
		return nil, err
	}
	setPresence := q.Get("set_presence")
	switch setPresence {
	case "":
		setPresence = PresenceOnline
	case PresenceOnline, PresenceOffline, PresenceUnavailable:
	default:
		return nil, httpx.InvalidParam("set_presence must be online, offline or unavailable")
	}
	ctx := r.Context()
	if err := s.touchPresence(ctx, p.UserID, setPresence); err != nil {
		return nil, err
	}

	// Listen before reading, so a change committed meanwhile still wakes us.
	l := s.notifier.Listen(p.UserID)
	defer l.Close()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		rq.Typing = s.typing.Serial()
		if rq.To, err = s.db.CurrentStreamPos(ctx); err != nil {
			return nil, err
		}
		resp, err := s.build(ctx, rq)
		if err != nil {
			return nil, err
		}
		if rq.Initial || timeout == 0 || !resp.empty() || rq.FullState {
			return resp, nil
		}
		select {
		case <-l.C:
		case <-deadline.C:
			return resp, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// parseFilter resolves the filter parameter: a stored filter ID or inline
// JSON.
func (s *Service) parseFilter(ctx context.Context, userID, param string) (*accounts.Filter, error) {
	if param == "" {
		return &accounts.Filter{}, nil
	}
	if param[0] == '{' {
		f, err := accounts.ParseFilter([]byte(param))
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	f, err := s.accounts.GetFilter(ctx, userID, param)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, httpx.NotFound("No such filter")
	}
	return f, nil
}

// build assembles one response for rq's range.
func (s *Service) build(ctx context.Context, rq *Request) (*Response, error) {
	resp := &Response{NextBatch: Token{Pos: rq.To, Typing: rq.Typing}.String()}
	from := rq.Since.Pos
	if rq.Initial {
		from = -1
	}
	rq.newlyJoined = nil
	var err error
	if rq.ignored, err = s.ignoredUsers(ctx, rq.UserID); err != nil {
		return nil, err
	}
	roomsSection, err := s.roomsSection(ctx, rq)
	if err != nil {
		return nil, err
	}
	if !roomsSection.empty() {
		resp.Rooms = roomsSection
	}
	global, err := s.accountData(ctx, rq.UserID, "", from, rq.To, rq.Filter.AccountData)
	if err != nil {
		return nil, err
	}
	if len(global) > 0 {
		resp.AccountData = &EventList{Events: global}
	}
	if s.presenceEnabled && allowsType(rq.Filter.Presence, "m.presence") {
		peers, err := s.sharedUsers(ctx, rq.UserID)
		if err != nil {
			return nil, err
		}
		set := make(map[string]bool, len(peers))
		for _, u := range peers {
			set[u] = true
		}
		if !rq.Initial {
			delete(set, rq.UserID)
		}
		evs, err := s.presenceSince(ctx, set, from, rq.To)
		if err != nil {
			return nil, err
		}
		if !rq.Initial {
			// Users met for the first time (a room just joined, or someone
			// who just joined one of ours) get their current presence.
			fresh, err := s.newlyMetUsers(ctx, rq)
			if err != nil {
				return nil, err
			}
			more, err := s.currentPresence(ctx, fresh, evs)
			if err != nil {
				return nil, err
			}
			evs = append(evs, more...)
		}
		if len(evs) > 0 {
			resp.Presence = &EventList{Events: evs}
		}
	}
	for _, x := range s.extensions {
		if err := x(ctx, rq, resp); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// accountData returns the user's account data events of a room ("" for
// global) changed in (from, to].
func (s *Service) accountData(ctx context.Context, userID, roomID string, from, to int64, f *accounts.EventFilter) ([]json.RawMessage, error) {
	rows, err := s.db.Query(ctx, `SELECT type, content FROM account_data WHERE user_id = $1 AND room_id = $2 AND stream_pos > $3 AND stream_pos <= $4 ORDER BY stream_pos`,
		userID, roomID, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []json.RawMessage
	for rows.Next() {
		var typ, content string
		if err := rows.Scan(&typ, &content); err != nil {
			return nil, err
		}
		if !allowsType(f, typ) {
			continue
		}
		b, _ := json.Marshal(map[string]any{"type": typ, "content": json.RawMessage(content)})
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if f != nil && f.Limit != nil && len(out) > *f.Limit {
		out = out[len(out)-*f.Limit:]
	}
	return out, nil
}

// ignoredUsers reads the user's m.ignored_user_list.
func (s *Service) ignoredUsers(ctx context.Context, userID string) (map[string]bool, error) {
	raw, err := s.accounts.GetAccountData(ctx, userID, "", "m.ignored_user_list")
	if err != nil || raw == nil {
		return nil, err
	}
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return nil, nil
	}
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out, nil
}
