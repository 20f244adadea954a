package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strings"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// POST /keys/upload: device identity keys, one-time keys and fallback keys
// (client-server spec, "Key management API").

// algSignedCurve25519 is the one-time key algorithm of Olm; its count is
// always reported, zero included, so that clients know to upload keys.
const algSignedCurve25519 = "signed_curve25519"

// keysUpload is the body of /keys/upload (and the key part of a dehydrated
// device).
type keysUpload struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// oneTimeKey is a one-time or fallback key of a device.
type oneTimeKey struct {
	algorithm, keyID string
	json             []byte // the key: a JSON string or a signed key object
}

// parsedUpload is a checked keysUpload.
type parsedUpload struct {
	deviceKeys []byte // canonical JSON; nil: none uploaded
	oneTime    []oneTimeKey
	fallback   []oneTimeKey
}

func (s *Service) handleUpload(r *http.Request, p *httpx.Principal) (any, error) {
	var req keysUpload
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	up, err := parseUpload(&req, p.UserID, p.DeviceID)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	var pos int64
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		var err error
		pos, err = storeUpload(ctx, tx, p.UserID, p.DeviceID, up)
		return err
	})
	if err != nil {
		return nil, err
	}
	if pos != 0 {
		s.afterDeviceListChange(ctx, p.UserID, p.DeviceID, pos)
	}
	counts, err := s.oneTimeKeyCounts(ctx, p.UserID, p.DeviceID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_key_counts": counts}, nil
}

// parseUpload checks an upload for userID's device deviceID.
func parseUpload(req *keysUpload, userID, deviceID string) (*parsedUpload, error) {
	up := &parsedUpload{}
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		dk, err := checkDeviceKeys(req.DeviceKeys, userID, deviceID)
		if err != nil {
			return nil, err
		}
		up.deviceKeys = dk
	}
	var err error
	if up.oneTime, err = parseOneTimeKeys(req.OneTimeKeys, "one_time_keys"); err != nil {
		return nil, err
	}
	if up.fallback, err = parseOneTimeKeys(req.FallbackKeys, "fallback_keys"); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, k := range up.fallback {
		if seen[k.algorithm] {
			return nil, httpx.InvalidParam("fallback_keys holds more than one key of algorithm %s", k.algorithm)
		}
		seen[k.algorithm] = true
	}
	return up, nil
}

// checkDeviceKeys checks the device keys of userID's device deviceID — the
// IDs must be the uploader's and the object must be signed by the device's
// own ed25519 key — and returns their canonical JSON.
func checkDeviceKeys(raw json.RawMessage, userID, deviceID string) ([]byte, error) {
	k, err := decodeKeyObject(raw, "device_keys")
	if err != nil {
		return nil, err
	}
	if k.UserID != userID || k.DeviceID != deviceID {
		return nil, httpx.InvalidParam("device_keys must be for user %s and device %s", userID, deviceID)
	}
	if k.Algorithms == nil || k.Keys == nil || k.Signatures == nil {
		return nil, httpx.MissingParam("device_keys needs algorithms, keys and signatures")
	}
	for _, a := range k.Algorithms {
		if !validText(a) {
			return nil, httpx.InvalidParam("device_keys has an invalid algorithm")
		}
	}
	for id, v := range k.Keys {
		if !validText(id) || !validText(v) || !strings.Contains(id, ":") {
			return nil, httpx.InvalidParam("device_keys has an invalid key %q", id)
		}
	}
	signingKeyID := "ed25519:" + deviceID
	if _, ok := parseEd25519(k.Keys[signingKeyID]); !ok {
		return nil, httpx.InvalidParam("device_keys needs a valid %s key", signingKeyID)
	}
	// The self-signature is not checked here: every client checks it
	// before trusting a device, and Synapse stores keys unchecked too
	// (Complement's device-list tests upload unsigned keys).
	out, err := canonical(raw)
	if err != nil {
		return nil, httpx.BadJSON("device_keys: %v", err)
	}
	return out, nil
}

// parseOneTimeKeys reads a map of "<algorithm>:<key_id>" to key, where a
// key is a string or a key object with a "key" string (what names the map
// in errors).
func parseOneTimeKeys(m map[string]json.RawMessage, what string) ([]oneTimeKey, error) {
	out := make([]oneTimeKey, 0, len(m))
	for name, raw := range m {
		alg, id, ok := strings.Cut(name, ":")
		if !ok || !validText(alg) || !validText(id) {
			return nil, httpx.InvalidParam("%s: %q is not <algorithm>:<key_id>", what, name)
		}
		var str string
		var obj struct {
			Key *string `json:"key"`
		}
		switch {
		case json.Unmarshal(raw, &str) == nil && str != "":
		case len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &obj) == nil && obj.Key != nil && *obj.Key != "":
		default:
			return nil, httpx.BadJSON("%s: %s must be a key string or an object with a key", what, name)
		}
		c, err := canonical(raw)
		if err != nil {
			// A JSON string: canonical form is itself, re-encoded.
			c = rawJSON(str)
		}
		out = append(out, oneTimeKey{algorithm: alg, keyID: id, json: c})
	}
	// The order within one upload does not matter (the spec treats the keys
	// of one upload as equivalent); sorting keeps claims deterministic.
	sort.Slice(out, func(i, j int) bool { return out[i].keyID < out[j].keyID })
	return out, nil
}

// storeUpload stores an upload inside tx and, when the device's identity
// keys appeared or changed, records a device-list change, whose position it
// returns (0: none).
func storeUpload(ctx context.Context, tx *db.Tx, userID, deviceID string, up *parsedUpload) (int64, error) {
	changed := false
	if up.deviceKeys != nil {
		var err error
		if changed, err = storeDeviceKeys(ctx, tx, userID, deviceID, up.deviceKeys); err != nil {
			return 0, err
		}
	}
	for _, k := range up.oneTime {
		if err := storeOneTimeKey(ctx, tx, userID, deviceID, k); err != nil {
			return 0, err
		}
	}
	for _, k := range up.fallback {
		// A new fallback key is unused; the same key uploaded again keeps
		// its state.
		if _, err := tx.Exec(ctx, `INSERT INTO e2ee_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
			VALUES ($1, $2, $3, $4, $5, FALSE)
			ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json,
				used = CASE WHEN e2ee_fallback_keys.key_id = excluded.key_id AND e2ee_fallback_keys.key_json = excluded.key_json
					THEN e2ee_fallback_keys.used ELSE FALSE END`,
			userID, deviceID, k.algorithm, k.keyID, string(k.json)); err != nil {
			return 0, err
		}
	}
	if !changed {
		return 0, nil
	}
	return recordDeviceListChange(ctx, tx, userID, deviceID)
}

// storeDeviceKeys stores a device's identity keys and reports whether they
// are new or different from the stored ones (then the signatures others
// made on the old keys are dropped).
func storeDeviceKeys(ctx context.Context, tx *db.Tx, userID, deviceID string, keys []byte) (bool, error) {
	var old string
	err := tx.QueryRow(ctx, `SELECT key_json FROM e2ee_device_keys WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&old)
	switch {
	case errors.Is(err, db.ErrNoRows):
		_, err = tx.Exec(ctx, `INSERT INTO e2ee_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)`, userID, deviceID, string(keys))
		return true, err
	case err != nil:
		return false, err
	case old == string(keys):
		return false, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE e2ee_device_keys SET key_json = $3 WHERE user_id = $1 AND device_id = $2`, userID, deviceID, string(keys)); err != nil {
		return false, err
	}
	if sameSignedContent([]byte(old), keys) {
		return false, nil // re-signed, same keys
	}
	_, err = tx.Exec(ctx, `DELETE FROM e2ee_key_signatures WHERE user_id = $1 AND key_id = $2`, userID, deviceID)
	return true, err
}

// storeOneTimeKey adds a one-time key. Uploading a key ID again with the
// same key is a no-op; with another key it is refused.
func storeOneTimeKey(ctx context.Context, tx *db.Tx, userID, deviceID string, k oneTimeKey) error {
	res, err := tx.Exec(ctx, `INSERT INTO e2ee_one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING`, userID, deviceID, k.algorithm, k.keyID, string(k.json))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	var old string
	if err := tx.QueryRow(ctx, `SELECT key_json FROM e2ee_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4`,
		userID, deviceID, k.algorithm, k.keyID).Scan(&old); err != nil {
		return err
	}
	if old != string(k.json) {
		return httpx.InvalidParam("One-time key %s:%s already exists with a different key", k.algorithm, k.keyID)
	}
	return nil
}

// oneTimeKeyCounts counts a device's unclaimed one-time keys per algorithm;
// signed_curve25519 is always present.
func (s *Service) oneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT algorithm, COUNT(*) FROM e2ee_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int64{algSignedCurve25519: 0}
	for rows.Next() {
		var alg string
		var n int64
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, err
		}
		counts[alg] = n
	}
	return counts, rows.Err()
}

// unusedFallbackKeyTypes lists the algorithms of a device's fallback keys
// that no claim has handed out yet (never nil: the sync field is required).
func (s *Service) unusedFallbackKeyTypes(ctx context.Context, userID, deviceID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT algorithm FROM e2ee_fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = FALSE ORDER BY algorithm`, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var alg string
		if err := rows.Scan(&alg); err != nil {
			return nil, err
		}
		out = append(out, alg)
	}
	return out, rows.Err()
}
