package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// directoryRoutes registers the alias, room directory, public rooms and
// room upgrade endpoints.
func (e *Engine) directoryRoutes(rt *httpx.Router) {
	e.aliasRoutes(rt)
	rt.Public("GET /_matrix/client/v3/directory/list/room/{roomId}", e.handleGetVisibility)
	rt.Authed("PUT /_matrix/client/v3/directory/list/room/{roomId}", e.handlePutVisibility)
	rt.Public("GET /_matrix/client/v3/publicRooms", e.handleGetPublicRooms)
	rt.AuthedGuestOK("POST /_matrix/client/v3/publicRooms", e.handlePostPublicRooms)
	rt.Authed("POST /_matrix/client/v3/rooms/{roomId}/upgrade", e.handleUpgrade)
}

// Published reports whether a room is in the public room directory;
// ErrRoomNotFound for rooms this server does not know.
func (e *Engine) Published(ctx context.Context, roomID string) (bool, error) {
	var published bool
	err := e.db.QueryRow(ctx, `SELECT published FROM rooms WHERE room_id = $1`, roomID).Scan(&published)
	if errors.Is(err, db.ErrNoRows) {
		return false, ErrRoomNotFound
	}
	return published, err
}

func (e *Engine) handleGetVisibility(r *http.Request) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	published, err := e.Published(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	return map[string]string{"visibility": visibilityName(published)}, nil
}

func visibilityName(published bool) string {
	if published {
		return "public"
	}
	return "private"
}

// handlePutVisibility publishes or unpublishes a room. Like Synapse, it
// takes a server admin or a member with power to send
// m.room.canonical_alias.
func (e *Engine) handlePutVisibility(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Visibility *string `json:"visibility"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	public := true // the spec's default
	if body.Visibility != nil {
		switch *body.Visibility {
		case "public":
		case "private":
			public = false
		default:
			return nil, httpx.InvalidParam("visibility must be public or private")
		}
	}
	ctx := r.Context()
	if _, err := e.Published(ctx, roomID); err != nil {
		return nil, err
	}
	if err := e.checkDirectoryPower(ctx, roomID, p, "change the room's directory visibility"); err != nil {
		return nil, err
	}
	if err := e.SetPublished(ctx, roomID, public); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// PublicRoomsRequest asks for a page of the local public room directory.
type PublicRoomsRequest struct {
	// Limit is the page size (0: the default, at most maxPublicRooms).
	Limit int64
	// Since is a next_batch or prev_batch token of an earlier page.
	Since string
	// SearchTerm matches name, topic and canonical alias, case-insensitively.
	SearchTerm string
	// RoomTypes keeps rooms of these m.room.create types (nil: rooms
	// without a type); an empty list keeps every room.
	RoomTypes []*string
	// ThirdPartyInstanceID selects an application service network's list;
	// IncludeAllNetworks adds every network's rooms to the main list.
	ThirdPartyInstanceID string
	IncludeAllNetworks   bool
	// Origin is the requesting server for federation requests: rooms
	// whose server ACL denies it, or that do not federate, are left out.
	Origin string
}

// PublicRoomsResponse is a page of the public room directory.
type PublicRoomsResponse struct {
	Chunk                  []PublicRoom `json:"chunk"`
	NextBatch              string       `json:"next_batch,omitempty"`
	PrevBatch              string       `json:"prev_batch,omitempty"`
	TotalRoomCountEstimate int64        `json:"total_room_count_estimate"`
}

// PublicRoom is one entry of the public room directory.
type PublicRoom struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	NumJoinedMembers int64  `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`

	federate bool // m.federate of the create event
}

// maxPublicRooms is the default and the largest page of the directory
// (Synapse's cap too).
const maxPublicRooms = 100

func (e *Engine) handleGetPublicRooms(r *http.Request) (any, error) {
	req, err := PublicRoomsQuery(r)
	if err != nil {
		return nil, err
	}
	return e.publicRooms(r.Context(), r.URL.Query().Get("server"), req)
}

func (e *Engine) handlePostPublicRooms(r *http.Request, _ *httpx.Principal) (any, error) {
	req, err := PublicRoomsBody(r)
	if err != nil {
		return nil, err
	}
	return e.publicRooms(r.Context(), r.URL.Query().Get("server"), req)
}

// PublicRoomsQuery reads the query parameters of GET /publicRooms (client
// and federation APIs).
func PublicRoomsQuery(r *http.Request) (PublicRoomsRequest, error) {
	q := r.URL.Query()
	req := PublicRoomsRequest{Since: q.Get("since"), ThirdPartyInstanceID: q.Get("third_party_instance_id")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return req, httpx.InvalidParam("limit must be an integer")
		}
		req.Limit = n
	}
	var err error
	req.IncludeAllNetworks, err = httpx.QueryBool(r, "include_all_networks", false)
	return req, err
}

// PublicRoomsBody reads the body of POST /publicRooms (client and
// federation APIs).
func PublicRoomsBody(r *http.Request) (PublicRoomsRequest, error) {
	var body struct {
		Limit  *int64 `json:"limit"`
		Since  string `json:"since"`
		Filter *struct {
			GenericSearchTerm string    `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool   `json:"include_all_networks"`
		ThirdPartyInstanceID string `json:"third_party_instance_id"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return PublicRoomsRequest{}, err
	}
	req := PublicRoomsRequest{Since: body.Since, IncludeAllNetworks: body.IncludeAllNetworks, ThirdPartyInstanceID: body.ThirdPartyInstanceID}
	if body.Limit != nil {
		req.Limit = *body.Limit
	}
	if body.Filter != nil {
		req.SearchTerm, req.RoomTypes = body.Filter.GenericSearchTerm, body.Filter.RoomTypes
	}
	return req, nil
}

// publicRooms answers both forms of /publicRooms. Another server's
// directory is asked for over federation (Federation.PublicRooms); without
// federation it answers 502, as for a server that cannot be reached.
func (e *Engine) publicRooms(ctx context.Context, server string, req PublicRoomsRequest) (any, error) {
	if server != "" && server != string(e.serverName) {
		if config.ValidateServerName(server) != nil {
			return nil, httpx.InvalidParam("Invalid server name %q", server)
		}
		if e.Federation.PublicRooms != nil {
			return e.Federation.PublicRooms(ctx, server, req)
		}
		return nil, httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Cannot fetch the room directory of %s: federation is not available yet", server)
	}
	return e.PublicRooms(ctx, req)
}

// publicRoomsToken is a pagination position in the directory's order
// (joined members descending, then room ID): pages go forwards from after
// it ("n" tokens) or backwards from before it ("p" tokens).
type publicRoomsToken struct {
	forward bool
	members int64
	roomID  string
}

func (t publicRoomsToken) String() string {
	dir := "p"
	if t.forward {
		dir = "n"
	}
	return fmt.Sprintf("%s%d_%s", dir, t.members, t.roomID)
}

func parsePublicRoomsToken(s string) (publicRoomsToken, error) {
	bad := httpx.InvalidParam("Invalid pagination token %q", s)
	if len(s) < 2 || (s[0] != 'n' && s[0] != 'p') {
		return publicRoomsToken{}, bad
	}
	num, roomID, ok := strings.Cut(s[1:], "_")
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || n < 0 || !strings.HasPrefix(roomID, "!") {
		return publicRoomsToken{}, bad
	}
	return publicRoomsToken{forward: s[0] == 'n', members: n, roomID: roomID}, nil
}

// PublicRooms returns a page of the local public room directory: the
// published rooms that are public, knockable or world-readable, largest
// first.
func (e *Engine) PublicRooms(ctx context.Context, req PublicRoomsRequest) (*PublicRoomsResponse, error) {
	if req.Limit < 0 {
		return nil, httpx.InvalidParam("limit must not be negative")
	}
	if req.IncludeAllNetworks && req.ThirdPartyInstanceID != "" {
		return nil, httpx.InvalidParam("include_all_networks and third_party_instance_id cannot be used together")
	}
	limit := int(req.Limit)
	if limit == 0 || limit > maxPublicRooms {
		limit = maxPublicRooms
	}
	var bound *publicRoomsToken
	if req.Since != "" {
		t, err := parsePublicRoomsToken(req.Since)
		if err != nil {
			return nil, err
		}
		bound = &t
	}
	resp := &PublicRoomsResponse{Chunk: []PublicRoom{}}
	if req.ThirdPartyInstanceID != "" {
		// No application service publishes rooms to a network list yet.
		return resp, nil
	}
	if err := e.db.QueryRow(ctx, `SELECT COUNT(*) FROM rooms WHERE published = $1`, true).Scan(&resp.TotalRoomCountEstimate); err != nil {
		return nil, err
	}
	forward := bound == nil || bound.forward
	rooms, more, err := e.scanPublicRooms(ctx, &req, bound, forward, limit)
	if err != nil {
		return nil, err
	}
	if !forward {
		slices.Reverse(rooms)
	}
	resp.Chunk = append(resp.Chunk, rooms...)
	if len(rooms) == 0 {
		if bound != nil && forward {
			resp.PrevBatch = publicRoomsToken{false, bound.members, bound.roomID}.String()
		}
		return resp, nil
	}
	first, last := rooms[0], rooms[len(rooms)-1]
	if (forward && more) || !forward {
		resp.NextBatch = publicRoomsToken{true, last.NumJoinedMembers, last.RoomID}.String()
	}
	if (forward && bound != nil) || (!forward && more) {
		resp.PrevBatch = publicRoomsToken{false, first.NumJoinedMembers, first.RoomID}.String()
	}
	return resp, nil
}

// publicRoomsBatch is how many candidate rooms are read per query.
const publicRoomsBatch = 100

// scanPublicRooms walks the published rooms from bound in the direction
// given and collects up to limit listable rooms that pass the filter; more
// reports whether another one follows.
func (e *Engine) scanPublicRooms(ctx context.Context, req *PublicRoomsRequest, bound *publicRoomsToken, forward bool, limit int) (rooms []PublicRoom, more bool, err error) {
	term := strings.ToLower(req.SearchTerm)
	for {
		batch, err := e.publishedRoomCounts(ctx, bound, forward)
		if err != nil {
			return nil, false, err
		}
		for _, c := range batch {
			pr, ok, err := e.publicRoom(ctx, c.roomID, c.members)
			if err != nil {
				return nil, false, err
			}
			if !ok || !pr.matches(term, req.RoomTypes) {
				continue
			}
			if req.Origin != "" {
				if allowed, err := e.ServerAllowed(ctx, pr.RoomID, req.Origin); err != nil {
					return nil, false, err
				} else if !allowed || !pr.federate {
					continue
				}
			}
			if len(rooms) == limit {
				return rooms, true, nil
			}
			rooms = append(rooms, pr)
		}
		if len(batch) < publicRoomsBatch {
			return rooms, false, nil
		}
		last := batch[len(batch)-1]
		bound = &publicRoomsToken{forward: forward, members: last.members, roomID: last.roomID}
	}
}

type roomCount struct {
	roomID  string
	members int64
}

// publishedRoomCounts reads the next batch of published rooms with their
// joined member counts, in directory order after bound (forward) or in
// reverse order before it.
func (e *Engine) publishedRoomCounts(ctx context.Context, bound *publicRoomsToken, forward bool) ([]roomCount, error) {
	const count = `COUNT(cs.state_key)`
	q := `SELECT r.room_id, ` + count + ` FROM rooms r
		LEFT JOIN current_state cs ON cs.room_id = r.room_id AND cs.type = 'm.room.member' AND cs.membership = 'join'
		WHERE r.published = $1 GROUP BY r.room_id`
	args := []any{true}
	if bound != nil {
		if forward {
			q += ` HAVING ` + count + ` < $2 OR (` + count + ` = $2 AND r.room_id > $3)`
		} else {
			q += ` HAVING ` + count + ` > $2 OR (` + count + ` = $2 AND r.room_id < $3)`
		}
		args = append(args, bound.members, bound.roomID)
	}
	if forward {
		q += ` ORDER BY 2 DESC, 1 ASC`
	} else {
		q += ` ORDER BY 2 ASC, 1 DESC`
	}
	q += fmt.Sprintf(` LIMIT %d`, publicRoomsBatch)
	rows, err := e.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list published rooms: %w", err)
	}
	defer rows.Close()
	var out []roomCount
	for rows.Next() {
		var c roomCount
		if err := rows.Scan(&c.roomID, &c.members); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// publicRoom builds a room's directory entry from its current state. ok is
// false for rooms the directory must not show: neither joinable by anyone
// (public or knock join rules) nor world-readable.
func (e *Engine) publicRoom(ctx context.Context, roomID string, members int64) (PublicRoom, bool, error) {
	pr := PublicRoom{RoomID: roomID, NumJoinedMembers: members, federate: true}
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return pr, false, err
	}
	get := func(typ string, v any) error {
		ev, err := e.stateEvent(ctx, ri, ri.state, typ, "")
		if err == nil && ev != nil {
			// Content of the wrong shape leaves the fields empty.
			_ = json.Unmarshal(ev.Content(), v)
		}
		return err
	}
	var create struct {
		Type     json.RawMessage `json:"type"`
		Federate *bool           `json:"m.federate"`
	}
	// Each event is decoded into its own value, so that a key of one event
	// (say a "name" in the create content) cannot fill another's field.
	var name, alias, avatar, joinRule, history, guests struct {
		Name              string `json:"name"`
		Alias             string `json:"alias"`
		URL               string `json:"url"`
		JoinRule          string `json:"join_rule"`
		HistoryVisibility string `json:"history_visibility"`
		GuestAccess       string `json:"guest_access"`
	}
	var topic struct {
		Topic  json.RawMessage `json:"topic"`
		MTopic json.RawMessage `json:"m.topic"`
	}
	for _, g := range []struct {
		typ string
		v   any
	}{
		{spec.MRoomCreate, &create}, {spec.MRoomName, &name}, {spec.MRoomTopic, &topic},
		{spec.MRoomCanonicalAlias, &alias}, {spec.MRoomAvatar, &avatar}, {spec.MRoomJoinRules, &joinRule},
		{spec.MRoomHistoryVisibility, &history}, {spec.MRoomGuestAccess, &guests},
	} {
		if err := get(g.typ, g.v); err != nil {
			return pr, false, err
		}
	}
	pr.Name, pr.CanonicalAlias, pr.AvatarURL, pr.JoinRule = name.Name, alias.Alias, avatar.URL, joinRule.JoinRule
	pr.Topic = plainTopic(topic.Topic, topic.MTopic)
	pr.WorldReadable = history.HistoryVisibility == VisWorldReadable
	pr.GuestCanJoin = guests.GuestAccess == "can_join"
	_ = json.Unmarshal(create.Type, &pr.RoomType)
	if create.Federate != nil {
		pr.federate = *create.Federate
	}
	switch pr.JoinRule {
	case spec.Public, spec.Knock, "knock_restricted":
		return pr, true, nil
	}
	return pr, pr.WorldReadable, nil
}

// plainTopic is the text/plain topic of m.room.topic content: the m.topic
// representation without a mimetype or with text/plain, else the legacy
// topic string.
func plainTopic(topic, mTopic json.RawMessage) string {
	var rich struct {
		Text []struct {
			Body     string `json:"body"`
			MimeType string `json:"mimetype"`
		} `json:"m.text"`
	}
	if json.Unmarshal(mTopic, &rich) == nil {
		for _, t := range rich.Text {
			if t.MimeType == "" || t.MimeType == "text/plain" {
				return t.Body
			}
		}
	}
	var s string
	_ = json.Unmarshal(topic, &s)
	return s
}

// matches applies the generic search term (already lower-cased) and the
// room type filter.
func (pr *PublicRoom) matches(term string, types []*string) bool {
	if term != "" && !strings.Contains(strings.ToLower(pr.Name), term) &&
		!strings.Contains(strings.ToLower(pr.Topic), term) &&
		!strings.Contains(strings.ToLower(pr.CanonicalAlias), term) {
		return false
	}
	if len(types) == 0 {
		return true
	}
	for _, t := range types {
		if (t == nil && pr.RoomType == "") || (t != nil && *t == pr.RoomType) {
			return true
		}
	}
	return false
}
