package accounts

import (
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Account registration (client-server spec, "Account registration"):
// POST /register under user-interactive authentication, guest accounts,
// GET /register/available and the registration token validity check.

// maxPasswordBytes bounds a new password; longer ones are refused rather
// than hashed (Synapse uses the same limit).
const maxPasswordBytes = 512

// maxDeviceIDBytes bounds a client-chosen device ID.
const maxDeviceIDBytes = 255

func (s *Service) registerRoutes(rt *httpx.Router) {
	rt.Public("POST /_matrix/client/v3/register", s.handleRegister)
	rt.Public("GET /_matrix/client/v3/register/available", s.handleRegisterAvailable)
	rt.Public("GET /_matrix/client/v1/register/m.login.registration_token/validity", s.handleRegistrationTokenValidity)
}

// newLoginParams are the request fields that shape the session handed out
// with a new account; /register and shared-secret registration share them.
type newLoginParams struct {
	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
	InhibitLogin             bool   `json:"inhibit_login"`
	RefreshToken             bool   `json:"refresh_token"`
}

// registerResponse is the answer to a successful registration.
type registerResponse struct {
	UserID       string `json:"user_id"`
	HomeServer   string `json:"home_server"` // deprecated in the spec; tools still read it
	AccessToken  string `json:"access_token,omitempty"`
	DeviceID     string `json:"device_id,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
}

type registerRequest struct {
	newLoginParams
	Auth     *AuthDict `json:"auth"`
	Username *string   `json:"username"`
	Password string    `json:"password"`
	// Type is set by application services (m.login.application_service).
	Type string `json:"type"`
}

func (s *Service) handleRegister(r *http.Request) (any, error) {
	if err := s.lim.Register.Check(httpx.ClientIP(r)); err != nil {
		return nil, err
	}
	var req registerRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return s.registerGuest(r, req.InitialDeviceDisplayName)
	default:
		return nil, httpx.InvalidParam("kind must be user or guest, not %q", kind)
	}
	if req.Type == "m.login.application_service" {
		// No application service is registered yet, so no as_token is valid.
		return nil, httpx.NewError(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown application service token")
	}
	flows, err := s.registrationFlows(ctx)
	if err != nil {
		return nil, err
	}
	// The spec asks for the username checks before user-interactive
	// authentication, so that a client learns of a taken or invalid name on
	// its first request.
	localpart := ""
	if req.Username != nil {
		localpart = strings.ToLower(*req.Username)
		if err := s.checkNewLocalpart(ctx, localpart); err != nil {
			return nil, err
		}
	}
	if err := req.newLoginParams.check(); err != nil {
		return nil, err
	}
	// A request that may complete the authentication must carry the whole
	// registration (the spec has the client resubmit the original request);
	// checking before CheckUIA keeps the session usable for a corrected retry.
	if req.Auth != nil && (req.Auth.Type != "" || req.Auth.Session != "") {
		if err := checkNewPassword(req.Password); err != nil {
			return nil, err
		}
	}
	res, err := s.CheckUIA(ctx, UIA{Flows: flows}, req.Auth)
	if err != nil {
		return nil, err
	}
	var also func(tx *db.Tx) error
	if res.RegistrationToken != "" {
		also = func(tx *db.Tx) error {
			return useRegistrationToken(ctx, tx, res.RegistrationToken, time.Now().UnixMilli())
		}
	}
	u, err := s.createAccount(ctx, localpart, req.Password, false, false, also)
	if err != nil {
		return nil, err
	}
	return s.loginNewAccount(r, u.UserID, req.newLoginParams)
}

// registerGuest creates a guest account. The spec has the server ignore
// every field but initial_device_display_name.
func (s *Service) registerGuest(r *http.Request, deviceDisplayName string) (any, error) {
	if !s.cfg.AllowGuests {
		return nil, httpx.NewError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
	}
	if err := checkDeviceText("", deviceDisplayName); err != nil {
		return nil, err
	}
	u, err := s.createAccount(r.Context(), "", "", false, true, nil)
	if err != nil {
		return nil, err
	}
	return s.loginNewAccount(r, u.UserID, newLoginParams{InitialDeviceDisplayName: deviceDisplayName})
}

// registrationFlows returns the UIA flows of /register in the configured
// registration mode, or 403 when nobody may register: closed registration
// offers the token flow only while a usable registration token exists.
func (s *Service) registrationFlows(ctx context.Context) ([][]string, error) {
	switch s.cfg.Registration {
	case config.RegistrationOpen:
		return [][]string{{StageDummy}, {StageRegistrationToken}}, nil
	case config.RegistrationToken:
		return [][]string{{StageRegistrationToken}}, nil
	}
	ok, err := s.anyRegistrationTokenValid(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, httpx.Forbidden("Registration is disabled")
	}
	return [][]string{{StageRegistrationToken}}, nil
}

// anyRegistrationTokenValid reports whether some registration token still
// has uses left and has not expired.
func (s *Service) anyRegistrationTokenValid(ctx context.Context) (bool, error) {
	var one int
	err := s.db.QueryRow(ctx, `SELECT 1 FROM registration_tokens
		WHERE (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > $1) LIMIT 1`,
		time.Now().UnixMilli()).Scan(&one)
	if errors.Is(err, db.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// checkNewLocalpart answers whether localpart may be registered: the
// grammar of ValidateLocalpart, no leading underscore (reserved for
// application services, as in Synapse) and not taken (M_USER_IN_USE).
func (s *Service) checkNewLocalpart(ctx context.Context, localpart string) error {
	if err := s.ValidateLocalpart(localpart); err != nil {
		return err
	}
	if strings.HasPrefix(localpart, "_") {
		return httpx.NewError(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may not begin with _")
	}
	exists, err := s.UserExists(ctx, s.UserID(localpart))
	if err != nil {
		return err
	}
	if exists {
		return ErrUserExists
	}
	return nil
}

// checkNewPassword checks a password chosen at registration.
func checkNewPassword(password string) error {
	if password == "" {
		return httpx.MissingParam("password is required")
	}
	if len(password) > maxPasswordBytes {
		return httpx.InvalidParam("password is longer than %d bytes", maxPasswordBytes)
	}
	return nil
}

// check validates the client-chosen parts of the new session.
func (p newLoginParams) check() error {
	if len(p.DeviceID) > maxDeviceIDBytes {
		return httpx.InvalidParam("device_id is longer than %d bytes", maxDeviceIDBytes)
	}
	return checkDeviceText(p.DeviceID, p.InitialDeviceDisplayName)
}

// createAccount creates a user with localpart, or with a generated numeric
// localpart when it is empty (retrying the unlikely collision).
func (s *Service) createAccount(ctx context.Context, localpart, password string, admin, guest bool, also func(tx *db.Tx) error) (*User, error) {
	if localpart != "" {
		return s.createUser(ctx, localpart, password, admin, guest, also)
	}
	for range 5 {
		u, err := s.createUser(ctx, generateLocalpart(), password, admin, guest, also)
		if !errors.Is(err, ErrUserExists) {
			return u, err
		}
	}
	return nil, errors.New("could not generate a free user ID")
}

// generateLocalpart returns a random 12-digit localpart for accounts
// registered without a username (guests, mostly).
func generateLocalpart() string {
	n, err := rand.Int(rand.Reader, big.NewInt(9e11))
	if err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return big.NewInt(0).Add(n, big.NewInt(1e11)).String()
}

// loginNewAccount builds the registration answer: the user ID and, unless
// inhibit_login is set, a new device with its tokens.
func (s *Service) loginNewAccount(r *http.Request, userID string, p newLoginParams) (*registerResponse, error) {
	resp := &registerResponse{UserID: userID, HomeServer: s.cfg.ServerName}
	if p.InhibitLogin {
		return resp, nil
	}
	sess, err := s.NewSession(r.Context(), userID, p.DeviceID, p.InitialDeviceDisplayName, httpx.ClientIP(r), r.UserAgent(), p.RefreshToken)
	if err != nil {
		return nil, err
	}
	resp.AccessToken, resp.DeviceID = sess.AccessToken, sess.DeviceID
	resp.RefreshToken, resp.ExpiresInMS = sess.RefreshToken, sess.ExpiresInMS
	return resp, nil
}

func (s *Service) handleRegisterAvailable(r *http.Request) (any, error) {
	if err := s.lim.Register.Check(httpx.ClientIP(r)); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if _, err := s.registrationFlows(ctx); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	if !q.Has("username") {
		return nil, httpx.MissingParam("username is required")
	}
	if err := s.checkNewLocalpart(ctx, strings.ToLower(q.Get("username"))); err != nil {
		return nil, err
	}
	return map[string]bool{"available": true}, nil
}

func (s *Service) handleRegistrationTokenValidity(r *http.Request) (any, error) {
	if err := s.lim.Register.Check(httpx.ClientIP(r)); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	if !q.Has("token") {
		return nil, httpx.MissingParam("token is required")
	}
	ok, err := s.RegistrationTokenValid(r.Context(), q.Get("token"))
	if err != nil {
		return nil, err
	}
	return map[string]bool{"valid": ok}, nil
}
