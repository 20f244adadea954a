package accounts

// Filters (client-server API "Filtering"):
//
//	POST /user/{userId}/filter             store a filter, answer its ID
//	GET  /user/{userId}/filter/{filterId}  the stored filter
//
// A filter is validated against the spec's Filter schema by ParseFilter,
// which /sync reuses for inline filters, and stored as the JSON the client
// sent (unknown fields included). Filter IDs are per user: the decimal
// string of 0, 1, 2 … Posting a filter identical to a stored one answers the
// stored filter's ID, so clients that post their filter at every start do
// not grow the table.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Filter is the spec's Filter: what /sync (and other APIs taking a filter)
// return. A nil list means the key was absent ("no restriction"); an empty
// list means nothing matches.
type Filter struct {
	// EventFields lists the dot-separated event fields to include; nil
	// means all fields.
	EventFields []string `json:"event_fields"`
	// EventFormat is "client" (the default when empty) or "federation".
	EventFormat string `json:"event_format,omitempty"`
	// Presence filters the presence updates.
	Presence *EventFilter `json:"presence,omitempty"`
	// AccountData filters the global account data.
	AccountData *EventFilter `json:"account_data,omitempty"`
	// Room filters room data.
	Room *RoomFilter `json:"room,omitempty"`
}

// EventFilter is the spec's EventFilter.
type EventFilter struct {
	// Limit is the maximum number of events to return; nil means the
	// server's default.
	Limit *int `json:"limit,omitempty"`
	// Types and NotTypes are event types, "*" matching any sequence of
	// characters.
	Types    []string `json:"types"`
	NotTypes []string `json:"not_types"`
	// Senders and NotSenders are user IDs.
	Senders    []string `json:"senders"`
	NotSenders []string `json:"not_senders"`
}

// RoomEventFilter is the spec's RoomEventFilter: an EventFilter with room
// and lazy-loading options.
type RoomEventFilter struct {
	EventFilter
	Rooms    []string `json:"rooms"`
	NotRooms []string `json:"not_rooms"`
	// ContainsURL, when set, keeps only events with (true) or without
	// (false) a url key in their content.
	ContainsURL               *bool `json:"contains_url,omitempty"`
	LazyLoadMembers           bool  `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers   bool  `json:"include_redundant_members,omitempty"`
	UnreadThreadNotifications bool  `json:"unread_thread_notifications,omitempty"`
}

// RoomFilter is the spec's RoomFilter: which rooms, and a filter per section
// of a room's data.
type RoomFilter struct {
	Rooms        []string         `json:"rooms"`
	NotRooms     []string         `json:"not_rooms"`
	IncludeLeave bool             `json:"include_leave,omitempty"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitempty"`
	State        *RoomEventFilter `json:"state,omitempty"`
	Timeline     *RoomEventFilter `json:"timeline,omitempty"`
	AccountData  *RoomEventFilter `json:"account_data,omitempty"`
}

// ParseFilter decodes and validates a filter. Its errors are Matrix errors:
// M_NOT_JSON for a body that is not JSON, M_BAD_JSON for a filter that does
// not follow the schema (wrong types, unknown event_format, negative limit,
// malformed room or user IDs). A limit of 0 is accepted although the spec
// asks for more than 0, as Synapse does, because clients send it.
func ParseFilter(raw []byte) (*Filter, error) {
	var f Filter
	if err := httpx.UnmarshalJSON(raw, &f); err != nil {
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *Filter) validate() error {
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return httpx.BadJSON("event_format must be client or federation, not %q", f.EventFormat)
	}
	if err := f.Presence.validate("presence"); err != nil {
		return err
	}
	if err := f.AccountData.validate("account_data"); err != nil {
		return err
	}
	if f.Room == nil {
		return nil
	}
	if err := checkRoomIDs("room", f.Room.Rooms, f.Room.NotRooms); err != nil {
		return err
	}
	sections := []struct {
		name string
		f    *RoomEventFilter
	}{
		{"room.ephemeral", f.Room.Ephemeral}, {"room.state", f.Room.State},
		{"room.timeline", f.Room.Timeline}, {"room.account_data", f.Room.AccountData},
	}
	for _, sec := range sections {
		if err := sec.f.validate(sec.name); err != nil {
			return err
		}
	}
	return nil
}

func (f *EventFilter) validate(where string) error {
	if f == nil {
		return nil
	}
	if f.Limit != nil && *f.Limit < 0 {
		return httpx.BadJSON("%s.limit must not be negative", where)
	}
	for _, list := range [][]string{f.Senders, f.NotSenders} {
		for _, id := range list {
			if _, _, ok := splitUserID(id); !ok {
				return httpx.BadJSON("%s: %q is not a valid user ID", where, id)
			}
		}
	}
	return nil
}

func (f *RoomEventFilter) validate(where string) error {
	if f == nil {
		return nil
	}
	if err := f.EventFilter.validate(where); err != nil {
		return err
	}
	return checkRoomIDs(where, f.Rooms, f.NotRooms)
}

// checkRoomIDs checks the room ID lists of a filter.
func checkRoomIDs(where string, lists ...[]string) error {
	for _, list := range lists {
		for _, id := range list {
			if !validRoomID(id) {
				return httpx.BadJSON("%s: %q is not a valid room ID", where, id)
			}
		}
	}
	return nil
}

func (s *Service) filterRoutes(rt *httpx.Router) {
	rt.Authed("POST /_matrix/client/v3/user/{userId}/filter", s.handleCreateFilter)
	rt.Authed("GET /_matrix/client/v3/user/{userId}/filter/{filterId}", s.handleGetFilter)
}

func (s *Service) handleCreateFilter(r *http.Request, p *httpx.Principal) (any, error) {
	if r.PathValue("userId") != p.UserID {
		return nil, httpx.Forbidden("You may only create filters for yourself")
	}
	raw, err := httpx.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := ParseFilter(raw); err != nil {
		return nil, err
	}
	id, err := s.storeFilter(r.Context(), p.UserID, raw)
	if err != nil {
		return nil, err
	}
	return map[string]string{"filter_id": id}, nil
}

func (s *Service) handleGetFilter(r *http.Request, p *httpx.Principal) (any, error) {
	if r.PathValue("userId") != p.UserID {
		return nil, httpx.Forbidden("You may only read your own filters")
	}
	raw, err := s.loadFilter(r.Context(), p.UserID, r.PathValue("filterId"))
	if err != nil {
		return nil, err
	}
	return raw, nil
}

// GetFilter returns a stored filter of a user, for /sync's filter
// parameter; 404 M_NOT_FOUND if the user has no filter with that ID.
func (s *Service) GetFilter(ctx context.Context, userID, filterID string) (*Filter, error) {
	raw, err := s.loadFilter(ctx, userID, filterID)
	if err != nil {
		return nil, err
	}
	return ParseFilter(raw)
}

// loadFilter is the stored JSON of a filter.
func (s *Service) loadFilter(ctx context.Context, userID, filterID string) (json.RawMessage, error) {
	n, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil || n < 0 {
		return nil, httpx.NotFound("No filter with ID %q", filterID)
	}
	var filter string
	err = s.db.QueryRow(ctx, `SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2`, userID, n).Scan(&filter)
	if errors.Is(err, db.ErrNoRows) {
		return nil, httpx.NotFound("No filter with ID %q", filterID)
	}
	if err != nil {
		return nil, fmt.Errorf("load filter: %w", err)
	}
	return json.RawMessage(filter), nil
}

// storeFilter stores a validated filter (or finds the identical one already
// stored) and returns its ID, the user's highest ID plus one.
func (s *Service) storeFilter(ctx context.Context, userID string, raw []byte) (string, error) {
	compact, err := compactJSON(raw)
	if err != nil {
		return "", httpx.NotJSON("Request body is not valid JSON")
	}
	var id int64
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		// Hold the user's row (a no-op update) so that concurrent posts of
		// the same user take their IDs one after the other; SQLite's single
		// writer serialises them anyway, PostgreSQL needs the row lock.
		if _, err := tx.Exec(ctx, `UPDATE users SET deactivated = deactivated WHERE user_id = $1`, userID); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT filter_id FROM filters WHERE user_id = $1 AND filter = $2 ORDER BY filter_id LIMIT 1`, userID, string(compact)).Scan(&id)
		if !errors.Is(err, db.ErrNoRows) {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO filters (user_id, filter_id, filter)
			SELECT $1, COALESCE(MAX(filter_id), -1) + 1, CAST($2 AS TEXT) FROM filters WHERE user_id = $1
			RETURNING filter_id`, userID, string(compact)).Scan(&id)
	})
	if err != nil {
		return "", fmt.Errorf("store filter: %w", err)
	}
	return strconv.FormatInt(id, 10), nil
}
