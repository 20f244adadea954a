package accounts

import (
	"context"
	"net/http"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Account management (client-server spec, "Account registration and
// management": whoami, password changes, deactivation). Third-party
// identifiers are in threepid.go.

// maxPasswordLen bounds new passwords (as Synapse does): hashing cost must
// not grow with the request body.
const maxPasswordLen = 512

func (s *Service) accountRoutes(rt *httpx.Router) {
	rt.AuthedGuestOK("GET /_matrix/client/v3/account/whoami", s.getWhoami)
	rt.Authed("POST /_matrix/client/v3/account/password", s.postPassword)
	rt.Authed("POST /_matrix/client/v3/account/deactivate", s.postDeactivate)
	s.threepidRoutes(rt)
}

func (s *Service) getWhoami(r *http.Request, p *httpx.Principal) (any, error) {
	out := map[string]any{"user_id": p.UserID, "is_guest": p.IsGuest}
	if p.DeviceID != "" {
		out["device_id"] = p.DeviceID
	}
	return out, nil
}

// requirePassword runs user-interactive authentication asking for the
// password of userID's own account: the protection of device deletion,
// password changes and deactivation.
func (s *Service) requirePassword(ctx context.Context, userID string, auth *AuthDict) error {
	_, err := s.CheckUIA(ctx, UIA{Flows: [][]string{{StagePassword}}, UserID: userID}, auth)
	return err
}

// postPassword changes the caller's password. The password reset without an
// access token (through an e-mail stage) is not offered: this server does not
// verify e-mail addresses, so an access token is required.
func (s *Service) postPassword(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		NewPassword   *string   `json:"new_password"`
		LogoutDevices *bool     `json:"logout_devices"`
		Auth          *AuthDict `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	// Checked before authentication so that a completed UIA session is not
	// spent on a request that must fail.
	if req.NewPassword == nil || *req.NewPassword == "" {
		return nil, httpx.MissingParam("Missing new_password")
	}
	if len(*req.NewPassword) > maxPasswordLen {
		return nil, httpx.InvalidParam("new_password is longer than %d bytes", maxPasswordLen)
	}
	if err := s.requirePassword(r.Context(), p.UserID, req.Auth); err != nil {
		return nil, err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	// The device making the request stays logged in, as the spec asks.
	if err := s.SetPassword(r.Context(), p.UserID, *req.NewPassword, logout, p.DeviceID); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// postDeactivate deactivates the caller's account. The spec lets this
// endpoint run without an access token; like Synapse, Palpo requires one
// (the only UIA stage offered is the account's password).
func (s *Service) postDeactivate(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		Auth     *AuthDict `json:"auth"`
		IDServer string    `json:"id_server"`
		Erase    bool      `json:"erase"`
	}
	if err := httpx.DecodeOptionalJSON(r, &req); err != nil {
		return nil, err
	}
	if err := s.requirePassword(r.Context(), p.UserID, req.Auth); err != nil {
		return nil, err
	}
	// Non-event data is erased whatever erase says. Serving redacted copies
	// of the user's events to later joiners (erase: true) needs the room
	// engine and is not done yet.
	if err := s.Deactivate(r.Context(), p.UserID); err != nil {
		return nil, err
	}
	// No third-party identifiers are stored, so there is nothing to unbind:
	// the spec requires "success" in that case.
	return map[string]string{"id_server_unbind_result": "success"}, nil
}

// Deactivate closes a local account for good: it can no longer log in, its
// devices and tokens are deleted (running the DeviceDeleted hook for each),
// its profile and account data are erased and its password is wiped; then
// the Deactivated hook runs (leaving rooms). The user ID stays taken.
func (s *Service) Deactivate(ctx context.Context, userID string) error {
	var deleted []string
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE users SET deactivated = $1, password_hash = '' WHERE user_id = $2`, true, userID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return httpx.NotFound("No such user")
		}
		for _, q := range []string{
			`UPDATE profiles SET displayname = NULL, avatar_url = NULL, fields = '{}' WHERE user_id = $1`,
			`DELETE FROM account_data WHERE user_id = $1`,
			`DELETE FROM login_tokens WHERE user_id = $1`,
			`DELETE FROM uia_sessions WHERE user_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, userID); err != nil {
				return err
			}
		}
		deleted, err = s.deleteDevicesTx(ctx, tx, userID, nil, "")
		return err
	})
	if err != nil {
		return err
	}
	s.afterDevicesDeleted(ctx, userID, deleted)
	s.tokens.forget("", userID, "")
	if s.Hooks.Deactivated != nil {
		s.Hooks.Deactivated(ctx, userID)
	}
	return nil
}
