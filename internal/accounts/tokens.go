package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"sync"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Tokens are 32 random bytes, base64url, behind a short prefix that tells
// what kind of token it is. Only their SHA-256 is stored: a leaked database
// does not hand out sessions. Lookups go by hash through an index, so no
// comparison of secret material happens in Go code.
const (
	accessPrefix  = "pa_"
	refreshPrefix = "pr_"
	loginPrefix   = "pl_"
)

// NewToken returns a fresh random token with the given prefix.
func NewToken(prefix string) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashToken is the stored form of a token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// RandomID returns n random letters, for device IDs and session IDs.
func RandomID(n int) string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// Session is what logging in hands out.
type Session struct {
	UserID       string
	DeviceID     string
	AccessToken  string
	RefreshToken string // empty unless asked for
	ExpiresInMS  int64  // 0: the access token does not expire
}

// tokenCache keeps recently used access tokens in memory so that most
// requests authenticate without a database round trip. Entries live for a
// short time; logout removes them at once in this process, and other
// processes notice within the entry lifetime.
type tokenCache struct {
	mu sync.Mutex
	m  map[string]cachedToken
}

type cachedToken struct {
	p       httpx.Principal
	expires int64 // token expiry, unix ms; 0 = never
	until   time.Time
}

const tokenCacheTTL = 30 * time.Second
const tokenCacheMax = 100_000

func (c *tokenCache) get(hash string) (cachedToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[hash]
	if !ok || time.Now().After(e.until) {
		return cachedToken{}, false
	}
	return e, true
}

func (c *tokenCache) put(hash string, e cachedToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= tokenCacheMax {
		clear(c.m)
	}
	c.m[hash] = e
}

// forget drops cached tokens: one hash, or every token of a user's device
// (deviceID "" = all of the user's devices).
func (c *tokenCache) forget(hash, userID, deviceID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if hash != "" {
		delete(c.m, hash)
		return
	}
	for h, e := range c.m {
		if e.p.UserID == userID && (deviceID == "" || e.p.DeviceID == deviceID) {
			delete(c.m, h)
		}
	}
}

// Authenticate resolves an access token; it is the router's Authenticator.
func (s *Service) Authenticate(ctx context.Context, token string) (*httpx.Principal, error) {
	hash := HashToken(token)
	now := time.Now().UnixMilli()
	if e, ok := s.tokens.get(hash); ok {
		if e.expires != 0 && now >= e.expires {
			return nil, httpx.UnknownToken(true)
		}
		p := e.p
		return &p, nil
	}
	var p httpx.Principal
	var expires int64
	var deactivated bool
	err := s.db.QueryRow(ctx, `SELECT t.user_id, t.device_id, t.expires_ts, u.is_guest, u.is_admin, u.deactivated
		FROM access_tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1`, hash).
		Scan(&p.UserID, &p.DeviceID, &expires, &p.IsGuest, &p.IsAdmin, &deactivated)
	if err == db.ErrNoRows || deactivated {
		return nil, httpx.UnknownToken(false)
	}
	if err != nil {
		return nil, err
	}
	p.TokenHash = hash
	s.tokens.put(hash, cachedToken{p: p, expires: expires, until: time.Now().Add(tokenCacheTTL)})
	if expires != 0 && now >= expires {
		return nil, httpx.UnknownToken(true)
	}
	return &p, nil
}

// NewSession creates (or reuses) a device for userID and issues an access
// token for it — and a refresh token when withRefresh is set. An existing
// device with the same ID keeps its keys but loses its old tokens, as the
// spec requires when a client logs in again with a known device_id.
func (s *Service) NewSession(ctx context.Context, userID, deviceID, displayName, ip, agent string, withRefresh bool) (*Session, error) {
	if deviceID == "" {
		deviceID = RandomID(10)
	}
	sess := &Session{UserID: userID, DeviceID: deviceID, AccessToken: NewToken(accessPrefix)}
	now := time.Now().UnixMilli()
	expires, lifetime := s.accessExpiry(now, withRefresh)
	sess.ExpiresInMS = lifetime
	if withRefresh {
		sess.RefreshToken = NewToken(refreshPrefix)
	}
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if err := s.upsertDevice(ctx, tx, userID, deviceID, displayName, ip, agent, now); err != nil {
			return err
		}
		if err := s.deleteDeviceTokens(ctx, tx, userID, deviceID); err != nil {
			return err
		}
		return insertTokens(ctx, tx, sess, now, expires)
	})
	if err != nil {
		return nil, err
	}
	s.tokens.forget("", userID, deviceID)
	return sess, nil
}

// accessExpiry is when an access token issued at now (unix ms) expires and
// its lifetime in ms; both 0 when it does not expire. Only tokens that come
// with a refresh token expire: a client without one could not renew them.
func (s *Service) accessExpiry(now int64, withRefresh bool) (expiresTS, lifetimeMS int64) {
	lt := s.cfg.TokenLifetime
	if !withRefresh || lt <= 0 {
		return 0, 0
	}
	return now + lt.Milliseconds(), lt.Milliseconds()
}

// insertTokens stores the hashes of the session's tokens.
func insertTokens(ctx context.Context, tx *db.Tx, sess *Session, now, expires int64) error {
	var refreshHash any
	if sess.RefreshToken != "" {
		rh := HashToken(sess.RefreshToken)
		refreshHash = rh
		if _, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)`,
			rh, sess.UserID, sess.DeviceID, now); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, refresh_hash)
		VALUES ($1, $2, $3, $4, $5, $6)`, HashToken(sess.AccessToken), sess.UserID, sess.DeviceID, now, expires, refreshHash)
	return err
}

// deleteDeviceTokens removes every access and refresh token of a device.
func (s *Service) deleteDeviceTokens(ctx context.Context, tx *db.Tx, userID, deviceID string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`, userID, deviceID)
	return err
}
