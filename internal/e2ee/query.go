package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// POST /keys/query and POST /keys/claim: handing out device keys,
// cross-signing keys and one-time keys, for local users from the database
// and for remote users through Remote.

// KeysQuery asks for keys: user ID → device IDs (empty: every device).
type KeysQuery map[string][]string

// KeysQueryResult is the answer to a KeysQuery (the body of /keys/query and
// of federation's /user/keys/query, without failures).
type KeysQueryResult struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
}

func newKeysQueryResult() *KeysQueryResult {
	return &KeysQueryResult{DeviceKeys: map[string]map[string]json.RawMessage{}, MasterKeys: map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{}}
}

// merge adds o's keys to r.
func (r *KeysQueryResult) merge(o *KeysQueryResult) {
	for u, d := range o.DeviceKeys {
		r.DeviceKeys[u] = d
	}
	for u, k := range o.MasterKeys {
		r.MasterKeys[u] = k
	}
	for u, k := range o.SelfSigningKeys {
		r.SelfSigningKeys[u] = k
	}
	for u, k := range o.UserSigningKeys {
		r.UserSigningKeys[u] = k
	}
}

// KeysClaim asks for one-time keys: user ID → device ID → algorithm.
type KeysClaim map[string]map[string]string

// ClaimedKeys are claimed keys: user ID → device ID → "<algorithm>:<key_id>"
// → key.
type ClaimedKeys map[string]map[string]map[string]json.RawMessage

func (s *Service) handleQuery(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		Timeout    *int64    `json:"timeout"`
		DeviceKeys KeysQuery `json:"device_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceKeys == nil {
		return nil, httpx.MissingParam("Missing device_keys")
	}
	local, remote := KeysQuery{}, map[string]KeysQuery{}
	for user, devices := range req.DeviceKeys {
		if !validUserID(user) {
			return nil, httpx.InvalidParam("Invalid user ID %q in device_keys", user)
		}
		if s.isLocal(user) {
			local[user] = devices
			continue
		}
		server := serverOf(user)
		if remote[server] == nil {
			remote[server] = KeysQuery{}
		}
		remote[server][user] = devices
	}
	ctx := r.Context()
	res, err := s.QueryLocalKeys(ctx, p.UserID, local)
	if err != nil {
		return nil, err
	}
	failures := map[string]any{}
	for server, q := range remote {
		if s.Remote.QueryKeys == nil {
			failures[server] = unreachable(server, nil)
			continue
		}
		got, err := s.Remote.QueryKeys(ctx, server, q)
		if err != nil {
			failures[server] = unreachable(server, err)
			continue
		}
		got.UserSigningKeys = nil // only ever shown to their owner
		res.merge(got)
	}
	return struct {
		*KeysQueryResult
		Failures map[string]any `json:"failures"`
	}{res, failures}, nil
}

// QueryLocalKeys answers a query about local users for requester (a local
// user ID, or "" for another server): device keys with the display names
// and the signatures requester may see, and cross-signing keys; the
// user-signing key only when requester queries themself.
func (s *Service) QueryLocalKeys(ctx context.Context, requester string, q KeysQuery) (*KeysQueryResult, error) {
	res := newKeysQueryResult()
	for user, wanted := range q {
		devices, err := s.accounts.ListDevices(ctx, user)
		if err != nil {
			return nil, err
		}
		names := make(map[string]*string, len(devices))
		for _, d := range devices {
			names[d.DeviceID] = d.DisplayName
		}
		sigs, err := s.visibleSignatures(ctx, user, requester)
		if err != nil {
			return nil, err
		}
		keys, err := s.deviceKeysOf(ctx, user)
		if err != nil {
			return nil, err
		}
		out := map[string]json.RawMessage{}
		for deviceID, raw := range keys {
			name, exists := names[deviceID]
			if !exists || (len(wanted) > 0 && !slices.Contains(wanted, deviceID)) {
				continue
			}
			var unsigned any
			if name != nil && requester != "" {
				unsigned = map[string]any{"device_display_name": *name}
			}
			out[deviceID] = withSignatures(raw, sigs[deviceID], unsigned)
		}
		res.DeviceKeys[user] = out
		cs, err := s.crossSigningKeys(ctx, user)
		if err != nil {
			return nil, err
		}
		if master, ok := cs[keyMaster]; ok {
			res.MasterKeys[user] = withSignatures(master.raw, sigs[master.pub], nil)
		}
		if ssk, ok := cs[keySelfSigning]; ok {
			res.SelfSigningKeys[user] = ssk.raw
		}
		if usk, ok := cs[keyUserSigning]; ok && requester == user {
			res.UserSigningKeys[user] = usk.raw
		}
	}
	return res, nil
}

// deviceKeysOf returns the stored device keys of a user by device ID.
func (s *Service) deviceKeysOf(ctx context.Context, userID string) (map[string][]byte, error) {
	rows, err := s.db.Query(ctx, `SELECT device_id, key_json FROM e2ee_device_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var id, js string
		if err := rows.Scan(&id, &js); err != nil {
			return nil, err
		}
		out[id] = []byte(js)
	}
	return out, rows.Err()
}

// visibleSignatures returns the uploaded signatures on userID's keys that
// requester may see, by signed key ID: those made by userID themself (their
// self-signing key on their devices, their devices on their master key)
// and those made by requester. Signatures of third parties' user-signing
// keys stay hidden (spec: "Key and signature security").
func (s *Service) visibleSignatures(ctx context.Context, userID, requester string) (map[string]signatures, error) {
	rows, err := s.db.Query(ctx, `SELECT key_id, signer_user_id, signer_key_id, signature FROM e2ee_key_signatures
		WHERE user_id = $1 AND (signer_user_id = $1 OR signer_user_id = $2)`, userID, requester)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]signatures{}
	for rows.Next() {
		var keyID, signer, signerKey, sig string
		if err := rows.Scan(&keyID, &signer, &signerKey, &sig); err != nil {
			return nil, err
		}
		if out[keyID] == nil {
			out[keyID] = signatures{}
		}
		if out[keyID][signer] == nil {
			out[keyID][signer] = map[string]string{}
		}
		out[keyID][signer][signerKey] = sig
	}
	return out, rows.Err()
}

func (s *Service) handleClaim(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		Timeout     *int64    `json:"timeout"`
		OneTimeKeys KeysClaim `json:"one_time_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.OneTimeKeys == nil {
		return nil, httpx.MissingParam("Missing one_time_keys")
	}
	local, remote := KeysClaim{}, map[string]KeysClaim{}
	for user, devices := range req.OneTimeKeys {
		if !validUserID(user) {
			return nil, httpx.InvalidParam("Invalid user ID %q in one_time_keys", user)
		}
		for device, alg := range devices {
			if !validText(device) || !validText(alg) {
				return nil, httpx.InvalidParam("Invalid device ID or algorithm in one_time_keys for %s", user)
			}
		}
		if s.isLocal(user) {
			local[user] = devices
			continue
		}
		server := serverOf(user)
		if remote[server] == nil {
			remote[server] = KeysClaim{}
		}
		remote[server][user] = devices
	}
	ctx := r.Context()
	claimed, err := s.ClaimLocalKeys(ctx, local)
	if err != nil {
		return nil, err
	}
	failures := map[string]any{}
	for server, q := range remote {
		if s.Remote.ClaimKeys == nil {
			failures[server] = unreachable(server, nil)
			continue
		}
		got, err := s.Remote.ClaimKeys(ctx, server, q)
		if err != nil {
			failures[server] = unreachable(server, err)
			continue
		}
		for u, d := range got {
			claimed[u] = d
		}
	}
	return map[string]any{"one_time_keys": claimed, "failures": failures}, nil
}

// ClaimLocalKeys claims one key per requested local device: the oldest
// one-time key of the algorithm, which is deleted so that nobody gets it
// again, or else the device's fallback key of the algorithm, which is
// marked used. Devices without either are left out.
func (s *Service) ClaimLocalKeys(ctx context.Context, q KeysClaim) (ClaimedKeys, error) {
	out := ClaimedKeys{}
	for user, devices := range q {
		for device, alg := range devices {
			keyID, key, err := s.claimOne(ctx, user, device, alg)
			if err != nil {
				return nil, err
			}
			if key == "" {
				continue
			}
			if out[user] == nil {
				out[user] = map[string]map[string]json.RawMessage{}
			}
			out[user][device] = map[string]json.RawMessage{alg + ":" + keyID: json.RawMessage(key)}
		}
	}
	return out, nil
}

// claimOne claims a key of one device ("" if it has none).
func (s *Service) claimOne(ctx context.Context, user, device, alg string) (keyID, key string, err error) {
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		for {
			var id int64
			err := tx.QueryRow(ctx, `SELECT id, key_id, key_json FROM e2ee_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
				ORDER BY id LIMIT 1`, user, device, alg).Scan(&id, &keyID, &key)
			if errors.Is(err, db.ErrNoRows) {
				break
			}
			if err != nil {
				return err
			}
			res, err := tx.Exec(ctx, `DELETE FROM e2ee_one_time_keys WHERE id = $1`, id)
			if err != nil {
				return err
			}
			// On PostgreSQL a concurrent claim may have taken the key
			// between the two statements: then try the next one.
			if n, _ := res.RowsAffected(); n == 1 {
				return nil
			}
		}
		err := tx.QueryRow(ctx, `UPDATE e2ee_fallback_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
			RETURNING key_id, key_json`, user, device, alg).Scan(&keyID, &key)
		if errors.Is(err, db.ErrNoRows) {
			keyID, key = "", ""
			return nil
		}
		return err
	})
	return keyID, key, err
}

// UserDevices is a local user's device list as federation's
// /user/devices/{userId} serves it: the devices with identity keys, the
// public cross-signing keys, and the stream ID of the list's last change
// (the stream_id of the m.device_list_update EDUs that follow).
type UserDevices struct {
	UserID         string          `json:"user_id"`
	StreamID       int64           `json:"stream_id"`
	Devices        []UserDevice    `json:"devices"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// UserDevice is one device of a UserDevices.
type UserDevice struct {
	DeviceID string          `json:"device_id"`
	Keys     json.RawMessage `json:"keys"`
}

// UserDevices returns a local user's device list for another server.
// Display names are not shared with other servers.
func (s *Service) UserDevices(ctx context.Context, userID string) (*UserDevices, error) {
	out := &UserDevices{UserID: userID, Devices: []UserDevice{}}
	err := s.db.QueryRow(ctx, `SELECT COALESCE(MAX(stream_pos), 0) FROM e2ee_device_list_changes WHERE user_id = $1`, userID).Scan(&out.StreamID)
	if err != nil {
		return nil, err
	}
	res, err := s.QueryLocalKeys(ctx, "", KeysQuery{userID: nil})
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(res.DeviceKeys[userID]))
	for id := range res.DeviceKeys[userID] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		out.Devices = append(out.Devices, UserDevice{DeviceID: id, Keys: res.DeviceKeys[userID][id]})
	}
	out.MasterKey, out.SelfSigningKey = res.MasterKeys[userID], res.SelfSigningKeys[userID]
	return out, nil
}
