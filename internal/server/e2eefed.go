package server

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/e2ee"
	"github.com/palpo-go/palpo/internal/httpx"
)

// End-to-end encryption over federation: the federation endpoints that
// serve local users' keys and device lists from the E2EE domain, and the
// E2EE domain's Remote seams filled in with the federation client.

// e2eeRemoteTimeout bounds one request to another server for keys.
const e2eeRemoteTimeout = 10 * time.Second

// wireE2EEFederation registers the inbound key endpoints and sets the
// E2EE domain's outbound key queries and claims. The federation transport's
// routes must be registered first.
func (s *Server) wireE2EEFederation() {
	const v1 = "/_matrix/federation/v1"
	s.Federation.Handle("POST "+v1+"/user/keys/query", s.handleFedKeysQuery)
	s.Federation.Handle("POST "+v1+"/user/keys/claim", s.handleFedKeysClaim)
	s.Federation.Handle("GET "+v1+"/user/devices/{userId}", s.handleFedUserDevices)
	s.E2EE.Remote.QueryKeys = s.remoteQueryKeys
	s.E2EE.Remote.ClaimKeys = s.remoteClaimKeys
}

// localUserID reports whether id is a valid user ID of this server.
func (s *Server) localUserID(id string) bool {
	return ofServer(id, s.Federation.ServerName())
}

// ofServer reports whether id is a valid user ID of server.
func ofServer(id, server string) bool {
	u, err := spec.NewUserID(id, true)
	return err == nil && string(u.Domain()) == server
}

func (s *Server) handleFedKeysQuery(r *http.Request, origin string) (any, error) {
	var req struct {
		DeviceKeys e2ee.KeysQuery `json:"device_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceKeys == nil {
		return nil, httpx.MissingParam("Missing device_keys")
	}
	local := e2ee.KeysQuery{}
	for user, devices := range req.DeviceKeys {
		if s.localUserID(user) {
			local[user] = devices
		}
	}
	return s.E2EE.QueryLocalKeys(r.Context(), "", local)
}

func (s *Server) handleFedKeysClaim(r *http.Request, origin string) (any, error) {
	var req struct {
		OneTimeKeys e2ee.KeysClaim `json:"one_time_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.OneTimeKeys == nil {
		return nil, httpx.MissingParam("Missing one_time_keys")
	}
	local := e2ee.KeysClaim{}
	for user, devices := range req.OneTimeKeys {
		if !s.localUserID(user) {
			continue
		}
		for device, alg := range devices {
			if device == "" || alg == "" || strings.ContainsRune(device+alg, 0) {
				return nil, httpx.InvalidParam("Invalid device ID or algorithm in one_time_keys for %s", user)
			}
		}
		local[user] = devices
	}
	claimed, err := s.E2EE.ClaimLocalKeys(r.Context(), local)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_keys": claimed}, nil
}

func (s *Server) handleFedUserDevices(r *http.Request, origin string) (any, error) {
	userID := r.PathValue("userId")
	if !s.localUserID(userID) {
		return nil, httpx.InvalidParam("%q is not a user of this server", userID)
	}
	return s.E2EE.UserDevices(r.Context(), userID)
}

// remoteQueryKeys asks server for its users' keys (e2ee.Remote.QueryKeys);
// keys of users of other servers in the answer are dropped.
func (s *Server) remoteQueryKeys(ctx context.Context, server string, q e2ee.KeysQuery) (*e2ee.KeysQueryResult, error) {
	ctx, cancel := context.WithTimeout(ctx, e2eeRemoteTimeout)
	defer cancel()
	var res e2ee.KeysQueryResult
	err := s.Federation.Client.Do(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": q}, &res)
	if err != nil {
		return nil, err
	}
	out := &e2ee.KeysQueryResult{DeviceKeys: keepOf(res.DeviceKeys, server), MasterKeys: keepOf(res.MasterKeys, server),
		SelfSigningKeys: keepOf(res.SelfSigningKeys, server)}
	return out, nil
}

// remoteClaimKeys claims one-time keys of server's devices
// (e2ee.Remote.ClaimKeys); keys of users of other servers are dropped.
func (s *Server) remoteClaimKeys(ctx context.Context, server string, q e2ee.KeysClaim) (e2ee.ClaimedKeys, error) {
	ctx, cancel := context.WithTimeout(ctx, e2eeRemoteTimeout)
	defer cancel()
	var res struct {
		OneTimeKeys e2ee.ClaimedKeys `json:"one_time_keys"`
	}
	err := s.Federation.Client.Do(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/claim",
		map[string]any{"one_time_keys": q}, &res)
	if err != nil {
		return nil, err
	}
	return keepOf(res.OneTimeKeys, server), nil
}

// keepOf returns the entries of m whose key is a user ID of server.
func keepOf[V any](m map[string]V, server string) map[string]V {
	out := make(map[string]V, len(m))
	for user, v := range m {
		if ofServer(user, server) {
			out[user] = v
		}
	}
	return out
}
