package accounts

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Login, token refresh and logout (client-server spec, "Login",
// "Refreshing access tokens", "Logout").

// Login types served by POST /login.
const (
	LoginTypePassword = "m.login.password"
	LoginTypeToken    = "m.login.token"
)

const (
	// maxDeviceIDLen bounds client-chosen device IDs.
	maxDeviceIDLen = 255
	// maxDeviceNameLen bounds device display names (in characters), as
	// Synapse does.
	maxDeviceNameLen = 100
)

// errBadLogin is the one answer for an unknown user and a wrong password, so
// that login does not reveal which accounts exist.
var errBadLogin = httpx.Forbidden("Invalid username or password")

// errDeactivated answers a login to a deactivated account.
var errDeactivated = httpx.NewError(http.StatusForbidden, "M_USER_DEACTIVATED", "This account has been deactivated")

// dummyHash is checked against when the user does not exist, so that a
// failed login takes as long for unknown users as for wrong passwords.
var dummyHash = sync.OnceValue(func() string {
	h, _ := HashPassword("palpo-timing-equaliser")
	return h
})

func (s *Service) loginRoutes(rt *httpx.Router) {
	rt.Public("GET /_matrix/client/v3/login", s.getLoginFlows)
	rt.Public("POST /_matrix/client/v3/login", s.postLogin)
	rt.Public("POST /_matrix/client/v3/refresh", s.postRefresh)
	// Logout accepts expired access tokens (a client may always end its
	// session), so these routes resolve the token themselves.
	rt.Public("POST /_matrix/client/v3/logout", s.postLogout)
	rt.Public("POST /_matrix/client/v3/logout/all", s.postLogoutAll)
}

// getLoginFlows answers GET /login. get_login_token is not offered: there is
// no POST /login/get_token yet.
func (s *Service) getLoginFlows(r *http.Request) (any, error) {
	return map[string]any{"flows": []map[string]any{
		{"type": LoginTypePassword},
		{"type": LoginTypeToken},
	}}, nil
}

// loginRequest is the body of POST /login.
type loginRequest struct {
	Type       string          `json:"type"`
	Identifier *UserIdentifier `json:"identifier"`
	// Deprecated forms of the identifier.
	User    string `json:"user"`
	Medium  string `json:"medium"`
	Address string `json:"address"`

	Password *string `json:"password"`
	Token    string  `json:"token"`

	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	RefreshToken             bool   `json:"refresh_token"`
}

func (s *Service) postLogin(r *http.Request) (any, error) {
	ctx := r.Context()
	ip := httpx.ClientIP(r)
	if err := s.lim.Login.Check("ip:" + ip); err != nil {
		return nil, err
	}
	var req loginRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if len(req.DeviceID) > maxDeviceIDLen {
		return nil, httpx.InvalidParam("device_id is longer than %d bytes", maxDeviceIDLen)
	}
	if err := checkDeviceText(req.DeviceID, req.InitialDeviceDisplayName); err != nil {
		return nil, err
	}
	var userID string
	var err error
	switch req.Type {
	case "":
		return nil, httpx.MissingParam("Missing login type")
	case LoginTypePassword:
		userID, err = s.passwordLogin(ctx, &req)
	case LoginTypeToken:
		userID, err = s.tokenLogin(ctx, req.Token)
	default:
		return nil, httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Unknown login type %q", req.Type)
	}
	if err != nil {
		return nil, err
	}

	// initial_device_display_name names new devices only.
	displayName := truncateRunes(req.InitialDeviceDisplayName, maxDeviceNameLen)
	if req.DeviceID != "" && displayName != "" {
		d, err := s.GetDevice(ctx, userID, req.DeviceID)
		if err != nil {
			return nil, err
		}
		if d != nil {
			displayName = ""
		}
	}
	sess, err := s.NewSession(ctx, userID, req.DeviceID, displayName, ip, r.UserAgent(), req.RefreshToken)
	if err != nil {
		return nil, err
	}
	return s.LoginResponse(sess), nil
}

// LoginResponse is the body answering a successful login (and
// registration): the session plus the deprecated home_server and the
// well_known client configuration.
func (s *Service) LoginResponse(sess *Session) map[string]any {
	out := map[string]any{
		"user_id":      sess.UserID,
		"access_token": sess.AccessToken,
		"device_id":    sess.DeviceID,
		"home_server":  s.cfg.ServerName,
		"well_known": map[string]any{
			"m.homeserver": map[string]string{"base_url": s.cfg.BaseURL()},
		},
	}
	addRefresh(out, sess)
	return out
}

// addRefresh adds the refresh token and the access token's lifetime, when
// the session has them.
func addRefresh(out map[string]any, sess *Session) {
	if sess.RefreshToken != "" {
		out["refresh_token"] = sess.RefreshToken
	}
	if sess.ExpiresInMS > 0 {
		out["expires_in_ms"] = sess.ExpiresInMS
	}
}

// passwordLogin checks an m.login.password login and returns the user ID.
func (s *Service) passwordLogin(ctx context.Context, req *loginRequest) (string, error) {
	if req.Password == nil {
		return "", httpx.MissingParam("Missing password")
	}
	userID, err := s.loginUserID(req)
	if err != nil {
		return "", err
	}
	if err := s.lim.Login.Check("user:" + userID); err != nil {
		return "", err
	}
	u, err := s.GetUser(ctx, userID)
	if err != nil {
		return "", err
	}
	if u == nil {
		CheckPassword(dummyHash(), *req.Password)
		return "", errBadLogin
	}
	// Deactivation wipes the password, so this comes first (as in Synapse).
	if u.Deactivated {
		return "", errDeactivated
	}
	if !CheckPassword(u.PasswordHash, *req.Password) {
		return "", errBadLogin
	}
	return u.UserID, nil
}

// loginUserID resolves who a password login is for: the identifier object,
// or the deprecated top-level user (or medium and address) fields.
func (s *Service) loginUserID(req *loginRequest) (string, error) {
	id := req.Identifier
	if id == nil {
		switch {
		case req.User != "":
			id = &UserIdentifier{Type: "m.id.user", User: req.User}
		case req.Medium != "" || req.Address != "":
			id = &UserIdentifier{Type: "m.id.thirdparty", Medium: req.Medium, Address: req.Address}
		default:
			return "", httpx.MissingParam("Missing identifier")
		}
	}
	switch id.Type {
	case "":
		return "", httpx.MissingParam("Identifier has no type")
	case "m.id.user":
		if id.User == "" {
			return "", httpx.MissingParam("Identifier has no user")
		}
		local, ok := s.LocalpartOf(id.User)
		if !ok {
			return "", errBadLogin
		}
		return s.UserID(local), nil
	case "m.id.thirdparty":
		if id.Medium == "" || id.Address == "" {
			return "", httpx.MissingParam("Third-party identifier needs medium and address")
		}
		// This server associates no third-party identifiers with accounts.
		return "", errBadLogin
	case "m.id.phone":
		if id.Country == "" || id.Phone == "" {
			return "", httpx.MissingParam("Phone identifier needs country and phone")
		}
		return "", errBadLogin
	}
	return "", httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Unknown identifier type %q", id.Type)
}

// tokenLogin redeems an m.login.token login token and returns its user ID.
func (s *Service) tokenLogin(ctx context.Context, token string) (string, error) {
	if token == "" {
		return "", httpx.MissingParam("Missing token")
	}
	var userID string
	var expires int64
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		// Deleting while reading makes the token single-use even under
		// concurrent logins.
		return tx.QueryRow(ctx, `DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts`, HashToken(token)).
			Scan(&userID, &expires)
	})
	if errors.Is(err, db.ErrNoRows) || (err == nil && time.Now().UnixMilli() >= expires) {
		return "", httpx.Forbidden("Invalid or expired login token")
	}
	if err != nil {
		return "", err
	}
	u, err := s.GetUser(ctx, userID)
	if err != nil {
		return "", err
	}
	if u == nil {
		return "", httpx.Forbidden("Invalid or expired login token")
	}
	if u.Deactivated {
		return "", errDeactivated
	}
	return userID, nil
}

// CreateLoginToken issues a single-use m.login.token token for userID, valid
// for ttl. Only its hash is stored.
func (s *Service) CreateLoginToken(ctx context.Context, userID string, ttl time.Duration) (string, error) {
	token := NewToken(loginPrefix)
	now := time.Now()
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		// Expired tokens are useless; clear them while here.
		if _, err := tx.Exec(ctx, `DELETE FROM login_tokens WHERE expires_ts <= $1`, now.UnixMilli()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`,
			HashToken(token), userID, now.Add(ttl).UnixMilli())
		return err
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// postRefresh answers POST /refresh.
func (s *Service) postRefresh(r *http.Request) (any, error) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.RefreshToken == "" {
		return nil, httpx.MissingParam("Missing refresh_token")
	}
	sess, err := s.RefreshSession(r.Context(), req.RefreshToken)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"access_token": sess.AccessToken}
	addRefresh(out, sess)
	return out, nil
}

// RefreshSession exchanges a refresh token for a new access token and a new
// refresh token on the same device. The old refresh token and the access
// token issued with it stop working at once. An unknown or already used
// refresh token gets 401 M_UNKNOWN_TOKEN.
func (s *Service) RefreshSession(ctx context.Context, refreshToken string) (*Session, error) {
	hash := HashToken(refreshToken)
	sess := &Session{AccessToken: NewToken(accessPrefix), RefreshToken: NewToken(refreshPrefix)}
	now := time.Now().UnixMilli()
	expires, lifetime := s.accessExpiry(now, true)
	sess.ExpiresInMS = lifetime
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		err := tx.QueryRow(ctx, `DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, device_id`, hash).
			Scan(&sess.UserID, &sess.DeviceID)
		if errors.Is(err, db.ErrNoRows) {
			return httpx.UnknownToken(false)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE refresh_hash = $1`, hash); err != nil {
			return err
		}
		return insertTokens(ctx, tx, sess, now, expires)
	})
	if err != nil {
		return nil, err
	}
	s.tokens.forget("", sess.UserID, sess.DeviceID)
	return sess, nil
}

// tokenOwner resolves the request's access token to its user and device
// without checking expiry: logging out needs no fresh token.
func (s *Service) tokenOwner(r *http.Request) (userID, deviceID string, err error) {
	tok := httpx.AccessToken(r)
	if tok == "" {
		return "", "", httpx.MissingToken()
	}
	err = s.db.QueryRow(r.Context(), `SELECT user_id, device_id FROM access_tokens WHERE token_hash = $1`, HashToken(tok)).
		Scan(&userID, &deviceID)
	if errors.Is(err, db.ErrNoRows) {
		return "", "", httpx.UnknownToken(false)
	}
	return userID, deviceID, err
}

// postLogout deletes the caller's device with its tokens (and, through the
// DeviceDeleted hook, its keys).
func (s *Service) postLogout(r *http.Request) (any, error) {
	userID, deviceID, err := s.tokenOwner(r)
	if err != nil {
		return nil, err
	}
	if err := s.DeleteDevices(r.Context(), userID, []string{deviceID}, ""); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// postLogoutAll deletes every device of the caller.
func (s *Service) postLogoutAll(r *http.Request) (any, error) {
	userID, _, err := s.tokenOwner(r)
	if err != nil {
		return nil, err
	}
	if err := s.DeleteDevices(r.Context(), userID, nil, ""); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// truncateRunes cuts s to at most n characters.
func truncateRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n])
}
