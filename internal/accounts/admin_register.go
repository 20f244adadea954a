package accounts

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Shared-secret registration, compatible with Synapse's
// /_synapse/admin/v1/register: deployment tools and the Complement suite
// create (admin) accounts with it. The caller fetches a one-time nonce, then
// posts the account with an HMAC-SHA1, keyed with the configured shared
// secret, over nonce NUL username NUL password NUL ("admin" | "notadmin").

const (
	// nonceLifetime is how long a nonce may be used after it was handed out.
	nonceLifetime = 60 * time.Second
	// maxNonces bounds the outstanding nonces: GET needs no authentication,
	// so it must not be able to grow memory without limit.
	maxNonces = 10_000
	// maxSharedSecretField bounds username and password, as Synapse does.
	maxSharedSecretField = 512
)

func (s *Service) adminRegisterRoutes(rt *httpx.Router) {
	rt.Public("GET /_synapse/admin/v1/register", s.handleSharedSecretNonce)
	rt.Public("POST /_synapse/admin/v1/register", s.handleSharedSecretRegister)
}

// nonceStore holds the nonces handed out for shared-secret registration, in
// memory (like Synapse): a nonce is used by the process that issued it,
// within a minute, once.
type nonceStore struct {
	mu sync.Mutex
	m  map[string]int64 // nonce → unix ms when it expires
}

// issue returns a new nonce, or "" when too many are outstanding.
func (n *nonceStore) issue(now time.Time) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	nonce := hex.EncodeToString(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweep(now)
	if len(n.m) >= maxNonces {
		return ""
	}
	n.m[nonce] = now.Add(nonceLifetime).UnixMilli()
	return nonce
}

// take consumes nonce; it reports whether the nonce was outstanding and
// unexpired.
func (n *nonceStore) take(nonce string, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweep(now)
	_, ok := n.m[nonce]
	delete(n.m, nonce)
	return ok
}

// sweep drops expired nonces; the caller holds mu.
func (n *nonceStore) sweep(now time.Time) {
	ms := now.UnixMilli()
	for k, exp := range n.m {
		if ms >= exp {
			delete(n.m, k)
		}
	}
}

// sharedSecretEnabled answers 400 when no shared secret is configured.
func (s *Service) sharedSecretEnabled() error {
	if s.cfg.RegistrationSharedSecret == "" {
		return httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled")
	}
	return nil
}

func (s *Service) handleSharedSecretNonce(r *http.Request) (any, error) {
	if err := s.sharedSecretEnabled(); err != nil {
		return nil, err
	}
	nonce := s.nonces.issue(time.Now())
	if nonce == "" {
		return nil, httpx.LimitExceeded(nonceLifetime)
	}
	return map[string]string{"nonce": nonce}, nil
}

type sharedSecretRequest struct {
	newLoginParams
	Nonce       string `json:"nonce"`
	Username    string `json:"username"`
	Password    string `json:"password"`
	Admin       bool   `json:"admin"`
	Displayname string `json:"displayname"`
	UserType    string `json:"user_type"`
	MAC         string `json:"mac"`
}

func (s *Service) handleSharedSecretRegister(r *http.Request) (any, error) {
	if err := s.sharedSecretEnabled(); err != nil {
		return nil, err
	}
	var req sharedSecretRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Nonce == "" {
		return nil, httpx.MissingParam("nonce must be specified")
	}
	// The nonce is spent by any attempt, even one that fails below.
	if !s.nonces.take(req.Nonce, time.Now()) {
		return nil, httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "unrecognised nonce")
	}
	for _, f := range []struct{ name, value string }{{"username", req.Username}, {"password", req.Password}, {"mac", req.MAC}} {
		if f.value == "" {
			return nil, httpx.MissingParam("%s must be specified", f.name)
		}
		if len(f.value) > maxSharedSecretField || strings.ContainsRune(f.value, 0) {
			return nil, httpx.InvalidParam("Invalid %s", f.name)
		}
	}
	if req.UserType != "" {
		return nil, httpx.InvalidParam("user_type is not supported")
	}
	want := RegistrationMAC(s.cfg.RegistrationSharedSecret, req.Nonce, req.Username, req.Password, req.Admin)
	got, err := hex.DecodeString(strings.ToLower(req.MAC))
	if err != nil || !hmac.Equal(want, got) {
		return nil, httpx.Forbidden("HMAC incorrect")
	}
	if err := req.newLoginParams.check(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	localpart := strings.ToLower(req.Username)
	if err := s.checkNewLocalpart(ctx, localpart); err != nil {
		return nil, err
	}
	var also func(tx *db.Tx) error
	if req.Displayname != "" {
		also = func(tx *db.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE profiles SET displayname = $1 WHERE user_id = $2`, req.Displayname, s.UserID(localpart))
			return err
		}
	}
	u, err := s.createAccount(ctx, localpart, req.Password, req.Admin, false, also)
	if err != nil {
		return nil, err
	}
	return s.loginNewAccount(r, u.UserID, req.newLoginParams)
}

// RegistrationMAC computes the MAC of a shared-secret registration request:
// HMAC-SHA1 keyed with secret over nonce, username, password and the admin
// flag, separated by NUL bytes — the algorithm of Synapse and its
// register_new_matrix_user tool.
func RegistrationMAC(secret, nonce, username, password string, admin bool) []byte {
	m := hmac.New(sha1.New, []byte(secret))
	flag := "notadmin"
	if admin {
		flag = "admin"
	}
	for i, part := range []string{nonce, username, password, flag} {
		if i > 0 {
			m.Write([]byte{0})
		}
		m.Write([]byte(part))
	}
	return m.Sum(nil)
}
