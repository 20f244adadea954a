package federation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"golang.org/x/sync/singleflight"

	"github.com/palpo-go/palpo/internal/cache"
	"github.com/palpo-go/palpo/internal/db"
)

// VerifyKey is a server's public signing key as the key ring knows it.
type VerifyKey struct {
	ServerName string
	KeyID      string // "ed25519:abc"
	Public     ed25519.PublicKey
	// ValidUntil is how long a current key (from verify_keys) may be used:
	// the response's valid_until_ts, at most 7 days after it was fetched.
	// Zero for an old key.
	ValidUntil time.Time
	// Expired is when an old key (from old_verify_keys) stopped being used.
	// Zero for a current key.
	Expired time.Time
}

// Old reports whether the key was published in old_verify_keys.
func (k VerifyKey) Old() bool { return !k.Expired.IsZero() }

// ValidAt reports whether the key may verify a signature made at t. With
// strict false (room versions 1 to 4, whose rules ignore valid_until_ts)
// every known key is accepted.
func (k VerifyKey) ValidAt(t time.Time, strict bool) bool {
	switch {
	case !strict:
		return true
	case k.Old():
		return t.Before(k.Expired)
	default:
		return !t.After(k.ValidUntil)
	}
}

// Notary is a trusted key server (federation.trusted_key_servers): asked
// for the keys of servers that cannot be reached directly.
type Notary struct {
	ServerName string
	// Keys are the notary's pinned keys (key ID → public key). When empty,
	// the notary's own keys are fetched from it directly.
	Keys map[string]ed25519.PublicKey
}

// ErrNoKey is wrapped by the errors of signatures whose key the key ring
// cannot find, or finds but not valid at the time of the signature.
var ErrNoKey = errors.New("no valid signing key")

// ErrBadSignature is wrapped by the errors of signatures that do not verify
// with the key they name.
var ErrBadSignature = errors.New("bad signature")

// refetchInterval limits how often the key ring asks the network for the
// keys of one server: a stream of requests naming an unknown key must not
// turn into a stream of key requests.
const refetchInterval = time.Minute

// KeyRing fetches, verifies, caches and persists other servers' signing
// keys, and checks signatures with them. Keys come from the server itself
// (/_matrix/key/v2/server) and, failing that, from the configured notaries;
// every response must be signed by each key it lists (and by the notary,
// for notary answers). Keys are kept in memory and in the server_keys table.
type KeyRing struct {
	self     string
	own      map[string]VerifyKey
	db       *db.DB
	client   *Client
	notaries []Notary
	now      func() time.Time

	mem      *cache.LRU[string, map[string]VerifyKey]
	attempts *cache.LRU[string, time.Time]
	flight   singleflight.Group
}

// NewKeyRing returns a key ring for the server self, whose own keys (current
// and old) are own.
func NewKeyRing(self string, own []VerifyKey, d *db.DB, client *Client, notaries []Notary) *KeyRing {
	k := &KeyRing{
		self:     self,
		own:      map[string]VerifyKey{},
		db:       d,
		client:   client,
		notaries: notaries,
		now:      time.Now,
		mem:      cache.NewLRU[string, map[string]VerifyKey](4096),
		attempts: cache.NewLRU[string, time.Time](4096),
	}
	for _, key := range own {
		k.own[key.KeyID] = key
	}
	return k
}

// VerifyJSON checks that message (a signed JSON object) carries a valid
// signature of server made at time at, by a key valid then (see
// VerifyKey.ValidAt for strict). Unknown keys are fetched.
func (k *KeyRing) VerifyJSON(ctx context.Context, server string, message []byte, at time.Time, strict bool) error {
	return k.verify(ctx, server, message, at, func(key VerifyKey) bool { return key.ValidAt(at, strict) })
}

// verifyRequest checks the signature of a federation request: only current
// keys, valid now, may sign requests.
func (k *KeyRing) verifyRequest(ctx context.Context, server string, message []byte) error {
	now := k.now()
	return k.verify(ctx, server, message, now, func(key VerifyKey) bool { return !key.Old() && key.ValidAt(now, true) })
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier, so that the room
// engine can check event signatures through gomatrixserverlib with this key
// ring. Each request's ValidityCheckingFunc decides whether a key was valid
// at its AtTS.
func (k *KeyRing) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		valid := r.ValidityCheckingFunc
		if valid == nil {
			valid = gomatrixserverlib.StrictValiditySignatureCheck
		}
		out[i].Error = k.verify(ctx, string(r.ServerName), r.Message, r.AtTS.Time(), func(key VerifyKey) bool {
			if key.Old() {
				return valid(r.AtTS, spec.AsTimestamp(key.Expired))
			}
			return valid(r.AtTS, spec.AsTimestamp(key.ValidUntil))
		})
	}
	return out, nil
}

// verify succeeds when one ed25519 signature of server on message verifies
// with a key accepted by ok.
func (k *KeyRing) verify(ctx context.Context, server string, message []byte, at time.Time, ok func(VerifyKey) bool) error {
	ids, err := gomatrixserverlib.ListKeyIDs(server, message)
	if err != nil {
		return fmt.Errorf("reading signatures: %w", err)
	}
	slices.Sort(ids)
	var errs []error
	for _, id := range ids {
		if !strings.HasPrefix(string(id), "ed25519:") {
			continue
		}
		key, err := k.Key(ctx, server, string(id), at, ok)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := gomatrixserverlib.VerifyJSON(server, id, key.Public, message); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s with %s: %v", ErrBadSignature, server, id, err))
			continue
		}
		return nil
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: not signed by %s with an ed25519 key", ErrNoKey, server)
	}
	return errors.Join(errs...)
}

// Key returns server's key keyID if ok accepts it. A key that is unknown,
// or known but not accepted (it may have been renewed since), is fetched
// again, at most once per refetchInterval; minValid is the time the key
// must be valid at, passed to notaries.
func (k *KeyRing) Key(ctx context.Context, server, keyID string, minValid time.Time, ok func(VerifyKey) bool) (VerifyKey, error) {
	keys, err := k.Known(ctx, server)
	if err != nil {
		return VerifyKey{}, err
	}
	if key, found := keys[keyID]; found && ok(key) {
		return key, nil
	}
	if server == k.self {
		return VerifyKey{}, fmt.Errorf("%w: %s has no key %s valid at %s", ErrNoKey, server, keyID, minValid.UTC())
	}
	fetchErr := k.throttled(server, server+"\x00"+keyID, func() error { return k.fetch(ctx, server, keyID, minValid) })
	if keys, err = k.Known(ctx, server); err != nil {
		return VerifyKey{}, err
	}
	if key, found := keys[keyID]; found && ok(key) {
		return key, nil
	}
	if fetchErr != nil {
		return VerifyKey{}, fmt.Errorf("%w: %s key %s: %v", ErrNoKey, server, keyID, fetchErr)
	}
	return VerifyKey{}, fmt.Errorf("%w: %s has no key %s valid at %s", ErrNoKey, server, keyID, minValid.UTC())
}

// errThrottled is the error of a fetch skipped by throttled.
var errThrottled = fmt.Errorf("keys fetched less than %s ago", refetchInterval)

// throttled runs fetch unless the network was asked about server less than
// refetchInterval ago. Concurrent calls with the same flight key share one
// run: a call that arrives while the fetch is under way waits for its
// result instead of being throttled by it.
func (k *KeyRing) throttled(server, flightKey string, fetch func() error) error {
	_, err, _ := k.flight.Do(flightKey, func() (any, error) {
		if last, tried := k.attempts.Get(server); tried && k.now().Sub(last) < refetchInterval {
			return nil, errThrottled
		}
		k.attempts.Put(server, k.now())
		return nil, fetch()
	})
	return err
}

// refreshDirect fetches server's keys from it directly (throttled), for the
// notary endpoints.
func (k *KeyRing) refreshDirect(ctx context.Context, server string) error {
	return k.throttled(server, server+"\x00", func() error { return k.fetchDirect(ctx, server) })
}

// Known returns the keys known for server, without network requests.
func (k *KeyRing) Known(ctx context.Context, server string) (map[string]VerifyKey, error) {
	if server == k.self {
		return k.own, nil
	}
	if keys, ok := k.mem.Get(server); ok {
		return keys, nil
	}
	keys, err := loadKeys(ctx, k.db, server)
	if err != nil {
		return nil, fmt.Errorf("loading the keys of %s: %w", server, err)
	}
	k.mem.Put(server, keys)
	return keys, nil
}

// fetch asks server for its keys, then the notaries until keyID is known
// and valid at minValid.
func (k *KeyRing) fetch(ctx context.Context, server, keyID string, minValid time.Time) error {
	satisfied := func() bool {
		keys, err := k.Known(ctx, server)
		key, found := keys[keyID]
		return err == nil && found && key.ValidAt(minValid, true)
	}
	var errs []error
	if err := k.fetchDirect(ctx, server); err != nil {
		errs = append(errs, err)
	} else if satisfied() {
		return nil
	}
	for _, n := range k.notaries {
		if n.ServerName == server || n.ServerName == k.self {
			continue
		}
		if err := k.fetchFromNotary(ctx, n, server, keyID, minValid); err != nil {
			errs = append(errs, err)
		} else if satisfied() {
			return nil
		}
	}
	return errors.Join(errs...)
}

// fetchDirect fetches /_matrix/key/v2/server from server and records the
// keys if the response checks out.
func (k *KeyRing) fetchDirect(ctx context.Context, server string) error {
	var raw json.RawMessage
	if err := k.client.Get(ctx, server, "/_matrix/key/v2/server", &raw); err != nil {
		return fmt.Errorf("fetching the keys of %s: %w", server, err)
	}
	resp, err := checkServerKeys(server, raw, k.now())
	if err != nil {
		return err
	}
	return k.record(ctx, resp)
}

// fetchFromNotary asks notary n for server's keys.
func (k *KeyRing) fetchFromNotary(ctx context.Context, n Notary, server, keyID string, minValid time.Time) error {
	notaryKeys, err := k.notaryKeys(ctx, n)
	if err != nil {
		return err
	}
	criteria := map[string]any{}
	if keyID != "" {
		criteria[keyID] = map[string]int64{"minimum_valid_until_ts": minValid.UnixMilli()}
	}
	body := map[string]any{"server_keys": map[string]any{server: criteria}}
	var answer struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := k.client.do(ctx, n.ServerName, http.MethodPost, "/_matrix/key/v2/query", body, &answer, false); err != nil {
		return fmt.Errorf("asking notary %s for the keys of %s: %w", n.ServerName, server, err)
	}
	var errs []error
	for _, raw := range answer.ServerKeys {
		if err := verifyWithAny(n.ServerName, raw, notaryKeys); err != nil {
			errs = append(errs, fmt.Errorf("notary %s: %w", n.ServerName, err))
			continue
		}
		resp, err := checkServerKeys(server, raw, k.now())
		if err != nil {
			errs = append(errs, fmt.Errorf("notary %s: %w", n.ServerName, err))
			continue
		}
		if err := k.record(ctx, resp); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// notaryKeys returns the keys a notary's answers must be signed with: the
// pinned ones, or the notary's current keys fetched from it directly.
func (k *KeyRing) notaryKeys(ctx context.Context, n Notary) (map[string]ed25519.PublicKey, error) {
	if len(n.Keys) > 0 {
		return n.Keys, nil
	}
	current := func() map[string]ed25519.PublicKey {
		keys, _ := k.Known(ctx, n.ServerName)
		out := map[string]ed25519.PublicKey{}
		for id, key := range keys {
			if !key.Old() && key.ValidAt(k.now(), true) {
				out[id] = key.Public
			}
		}
		return out
	}
	if keys := current(); len(keys) > 0 {
		return keys, nil
	}
	if err := k.fetchDirect(ctx, n.ServerName); err != nil {
		return nil, fmt.Errorf("notary %s: %w", n.ServerName, err)
	}
	return current(), nil
}

// verifyWithAny checks that message carries a valid signature of signer by
// one of keys.
func verifyWithAny(signer string, message []byte, keys map[string]ed25519.PublicKey) error {
	for id, pub := range keys {
		if gomatrixserverlib.VerifyJSON(signer, gomatrixserverlib.KeyID(id), pub, message) == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: not signed by %s with a known key", ErrNoKey, signer)
}

// record stores a checked response and forgets the cached keys of its
// server, so that the next lookup reads them again.
func (k *KeyRing) record(ctx context.Context, r *storedResponse) error {
	if err := storeResponse(ctx, k.db, r); err != nil {
		return fmt.Errorf("storing the keys of %s: %w", r.server, err)
	}
	k.mem.Remove(r.server)
	return nil
}

// checkServerKeys parses a server-keys response and checks it: it names
// server, lists at least one ed25519 key, and is signed by every ed25519
// key it lists (gomatrixserverlib.CheckKeys).
func checkServerKeys(server string, raw []byte, fetched time.Time) (*storedResponse, error) {
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		return nil, fmt.Errorf("keys of %s: %w", server, err)
	}
	checks, verified := gomatrixserverlib.CheckKeys(spec.ServerName(server), time.Unix(0, 0), keys)
	switch {
	case !checks.MatchingServerName:
		return nil, fmt.Errorf("keys of %s: response is for %q", server, keys.ServerName)
	case !checks.AllChecksOK:
		return nil, fmt.Errorf("keys of %s: not self-signed by each of its ed25519 keys", server)
	}
	r := &storedResponse{
		server:     server,
		raw:        raw,
		validUntil: keys.ValidUntilTS.Time(),
		fetched:    fetched,
		current:    map[string]ed25519.PublicKey{},
		old:        map[string]oldKey{},
	}
	for id, pub := range verified {
		r.current[string(id)] = ed25519.PublicKey(pub)
	}
	for id, old := range keys.OldVerifyKeys {
		if strings.HasPrefix(string(id), "ed25519:") && len(old.Key) == ed25519.PublicKeySize {
			if _, isCurrent := r.current[string(id)]; !isCurrent {
				// expired_ts 0 would read as "current" when loaded again.
				expired := old.ExpiredTS.Time()
				if old.ExpiredTS == 0 {
					expired = time.UnixMilli(1)
				}
				r.old[string(id)] = oldKey{public: ed25519.PublicKey(old.Key), expired: expired}
			}
		}
	}
	return r, nil
}
