package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"time"

	"github.com/palpo-go/palpo/internal/db"
)

// The server_keys table (migration 00006): other servers' keys and the
// signed responses they came from.

// maxKeyValidity is the longest a key fetched now may be trusted without
// fetching it again: "the lesser of valid_until_ts and 7 days into the
// future".
const maxKeyValidity = 7 * 24 * time.Hour

// storedResponse is one server-keys response as Palpo received it, with the
// keys it vouches for.
type storedResponse struct {
	server     string
	raw        []byte // the response, signed by its server (and maybe a notary)
	validUntil time.Time
	fetched    time.Time
	current    map[string]ed25519.PublicKey // verify_keys
	old        map[string]oldKey            // old_verify_keys
}

type oldKey struct {
	public  ed25519.PublicKey
	expired time.Time
}

// storeResponse records every key of a response. A row is only replaced by
// a response that is valid at least as long, so that a stale copy (from a
// notary's cache, say) never overwrites a fresher one.
func storeResponse(ctx context.Context, d *db.DB, r *storedResponse) error {
	const upsert = `
		INSERT INTO server_keys (server_name, key_id, public_key, expired_ts, valid_until_ts, fetched_ts, key_json)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (server_name, key_id) DO UPDATE SET
			public_key = excluded.public_key, expired_ts = excluded.expired_ts,
			valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts,
			key_json = excluded.key_json
		WHERE excluded.valid_until_ts >= server_keys.valid_until_ts`
	return d.WriteTx(ctx, func(tx *db.Tx) error {
		put := func(id string, pub ed25519.PublicKey, expired int64) error {
			_, err := tx.Exec(ctx, upsert, r.server, id, base64.RawStdEncoding.EncodeToString(pub),
				expired, r.validUntil.UnixMilli(), r.fetched.UnixMilli(), string(r.raw))
			return err
		}
		for id, pub := range r.current {
			if err := put(id, pub, 0); err != nil {
				return err
			}
		}
		for id, k := range r.old {
			if err := put(id, k.public, k.expired.UnixMilli()); err != nil {
				return err
			}
		}
		return nil
	})
}

// loadKeys reads the keys known for server.
func loadKeys(ctx context.Context, d *db.DB, server string) (map[string]VerifyKey, error) {
	rows, err := d.Query(ctx, `SELECT key_id, public_key, expired_ts, valid_until_ts, fetched_ts
		FROM server_keys WHERE server_name = $1`, server)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	keys := map[string]VerifyKey{}
	for rows.Next() {
		var id, pub string
		var expired, validUntil, fetched int64
		if err := rows.Scan(&id, &pub, &expired, &validUntil, &fetched); err != nil {
			return nil, err
		}
		raw, err := base64.RawStdEncoding.DecodeString(pub)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			continue // cannot happen: only checked keys are stored
		}
		k := VerifyKey{ServerName: server, KeyID: id, Public: raw}
		if expired != 0 {
			k.Expired = time.UnixMilli(expired)
		} else {
			k.ValidUntil = capValidity(time.UnixMilli(validUntil), time.UnixMilli(fetched))
		}
		keys[id] = k
	}
	return keys, rows.Err()
}

// capValidity applies the 7-day bound to a response's valid_until_ts.
func capValidity(validUntil, fetched time.Time) time.Time {
	if limit := fetched.Add(maxKeyValidity); validUntil.After(limit) {
		return limit
	}
	return validUntil
}

// cachedResponse is a stored response as the notary serves it again.
type cachedResponse struct {
	raw        []byte
	validUntil time.Time
	fetched    time.Time
	keyIDs     []string // the keys, current or old, it was stored for
}

// cachedResponses returns the distinct responses recorded for server, the
// one valid longest first.
func cachedResponses(ctx context.Context, d *db.DB, server string) ([]*cachedResponse, error) {
	rows, err := d.Query(ctx, `SELECT key_id, key_json, valid_until_ts, fetched_ts
		FROM server_keys WHERE server_name = $1 ORDER BY valid_until_ts DESC, key_id`, server)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*cachedResponse
	byJSON := map[string]*cachedResponse{}
	for rows.Next() {
		var id, raw string
		var validUntil, fetched int64
		if err := rows.Scan(&id, &raw, &validUntil, &fetched); err != nil {
			return nil, err
		}
		r, ok := byJSON[raw]
		if !ok {
			r = &cachedResponse{raw: []byte(raw), validUntil: time.UnixMilli(validUntil), fetched: time.UnixMilli(fetched)}
			byJSON[raw] = r
			out = append(out, r)
		}
		r.keyIDs = append(r.keyIDs, id)
	}
	return out, rows.Err()
}
