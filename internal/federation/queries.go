package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Queries between servers: room aliases (/query/directory), profiles
// (/query/profile) and the public room directory (/publicRooms), both
// ways.

func (s *Service) handleQueryDirectory(r *http.Request, origin string) (any, error) {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return nil, httpx.MissingParam("room_alias is required")
	}
	_, server, err := rooms.ParseAlias(alias)
	if err != nil {
		return nil, err
	}
	if server != s.serverName {
		return nil, httpx.NotFound("Room alias %s is not hosted on this server", alias)
	}
	roomID, servers, err := s.localAlias(r.Context(), alias)
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": servers}, nil
}

// localAlias resolves a local alias to its room and the room's servers,
// this one first.
func (s *Service) localAlias(ctx context.Context, alias string) (string, []string, error) {
	roomID, err := s.rooms.ResolveAlias(ctx, alias)
	if err != nil {
		return "", nil, err
	}
	if roomID == "" {
		return "", nil, httpx.NotFound("Room alias %s not found", alias)
	}
	others, err := s.Sender.RoomServers(ctx, roomID)
	if err != nil {
		return "", nil, err
	}
	return roomID, append([]string{s.serverName}, others...), nil
}

// ResolveRemoteAlias resolves a room alias of another server by asking it
// (/query/directory); a local alias is resolved here. A missing alias is
// 404 M_NOT_FOUND, a server that cannot be asked 502.
func (s *Service) ResolveRemoteAlias(ctx context.Context, alias string) (roomID string, servers []string, err error) {
	_, server, err := rooms.ParseAlias(alias)
	if err != nil {
		return "", nil, err
	}
	if server == s.serverName {
		return s.localAlias(ctx, alias)
	}
	var resp struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	q := url.Values{"room_alias": {alias}}
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/query/directory?"+q.Encode(), nil, &resp); err != nil {
		return "", nil, remoteFailure(err, "Room alias %s not found", alias)
	}
	if resp.RoomID == "" {
		return "", nil, httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "%s gave no room for %s", server, alias)
	}
	if !slices.Contains(resp.Servers, server) {
		resp.Servers = append(resp.Servers, server)
	}
	return resp.RoomID, resp.Servers, nil
}

// remoteFailure maps the failure of a request to another server for a
// client: its 404 is ours (notFound), anything else is 502.
func remoteFailure(err error, notFound string, args ...any) error {
	var re *RemoteError
	if errors.As(err, &re) && re.Status == http.StatusNotFound && re.ErrCode != "M_UNRECOGNIZED" {
		return httpx.NotFound(notFound, args...)
	}
	return httpx.NewError(http.StatusBadGateway, "M_UNKNOWN", "Federation request failed: %v", err)
}

func (s *Service) handleQueryProfile(r *http.Request, origin string) (any, error) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		return nil, httpx.MissingParam("user_id is required")
	}
	if !s.isLocalUser(userID) {
		return nil, httpx.InvalidParam("%s is not a user of this server", userID)
	}
	prof, err := s.accounts.LocalProfile(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	if !q.Has("field") {
		return prof, nil
	}
	field := q.Get("field")
	v, ok := prof[field]
	if !ok {
		return nil, httpx.NotFound("The profile has no field %s", field)
	}
	return map[string]json.RawMessage{field: v}, nil
}

// RemoteProfile asks a user's server for their profile (/query/profile),
// for the client API's profile lookups.
func (s *Service) RemoteProfile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	server := serverOfUser(userID)
	var prof map[string]json.RawMessage
	q := url.Values{"user_id": {userID}}
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/query/profile?"+q.Encode(), nil, &prof); err != nil {
		return nil, remoteFailure(err, "Profile of %s not found", userID)
	}
	for k, v := range prof {
		if string(v) == "null" {
			delete(prof, k)
		}
	}
	return prof, nil
}

func (s *Service) handleGetPublicRooms(r *http.Request, origin string) (any, error) {
	req, err := rooms.PublicRoomsQuery(r)
	if err != nil {
		return nil, err
	}
	req.Origin = origin
	return s.rooms.PublicRooms(r.Context(), req)
}

func (s *Service) handlePostPublicRooms(r *http.Request, origin string) (any, error) {
	req, err := rooms.PublicRoomsBody(r)
	if err != nil {
		return nil, err
	}
	req.Origin = origin
	return s.rooms.PublicRooms(r.Context(), req)
}

// RemotePublicRooms asks server for a page of its public room directory
// (POST /publicRooms, or GET for servers that only have that and a
// request without a filter).
func (s *Service) RemotePublicRooms(ctx context.Context, server string, req rooms.PublicRoomsRequest) (*rooms.PublicRoomsResponse, error) {
	body := map[string]any{}
	if req.Limit > 0 {
		body["limit"] = req.Limit
	}
	if req.Since != "" {
		body["since"] = req.Since
	}
	if req.SearchTerm != "" || req.RoomTypes != nil {
		filter := map[string]any{}
		if req.SearchTerm != "" {
			filter["generic_search_term"] = req.SearchTerm
		}
		if req.RoomTypes != nil {
			filter["room_types"] = req.RoomTypes
		}
		body["filter"] = filter
	}
	if req.IncludeAllNetworks {
		body["include_all_networks"] = true
	}
	if req.ThirdPartyInstanceID != "" {
		body["third_party_instance_id"] = req.ThirdPartyInstanceID
	}
	var resp rooms.PublicRoomsResponse
	err := s.fed.Client.Do(ctx, server, http.MethodPost, "/_matrix/federation/v1/publicRooms", body, &resp)
	var re *RemoteError
	if errors.As(err, &re) && re.ErrCode == "M_UNRECOGNIZED" && body["filter"] == nil {
		q := url.Values{}
		if req.Limit > 0 {
			q.Set("limit", strconv.FormatInt(req.Limit, 10))
		}
		if req.Since != "" {
			q.Set("since", req.Since)
		}
		if req.IncludeAllNetworks {
			q.Set("include_all_networks", "true")
		}
		if req.ThirdPartyInstanceID != "" {
			q.Set("third_party_instance_id", req.ThirdPartyInstanceID)
		}
		err = s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/publicRooms?"+q.Encode(), nil, &resp)
	}
	if err != nil {
		return nil, remoteFailure(err, "No public room directory on %s", server)
	}
	if resp.Chunk == nil {
		resp.Chunk = []rooms.PublicRoom{}
	}
	return &resp, nil
}
