package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// User-interactive authentication (client-server spec, "User-Interactive
// Authentication API"). Sessions live in the database so that they survive
// a restart and work across processes.

// Stage types.
const (
	StageDummy             = "m.login.dummy"
	StagePassword          = "m.login.password"
	StageRegistrationToken = "m.login.registration_token"
)

const uiaSessionLifetime = 30 * time.Minute

// AuthDict is the "auth" object of a request under UIA.
type AuthDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Password   string          `json:"password"`
	User       string          `json:"user"`
	Identifier *UserIdentifier `json:"identifier"`
	Token      string          `json:"token"`
}

// UserIdentifier is the identifier object of login and m.login.password.
type UserIdentifier struct {
	Type    string `json:"type"`
	User    string `json:"user"`
	Medium  string `json:"medium"`
	Address string `json:"address"`
	Country string `json:"country"`
	Phone   string `json:"phone"`
}

// UIA describes what an endpoint requires.
type UIA struct {
	// Flows the client may complete; each is a list of stage types.
	Flows [][]string
	// UserID is the account the request acts for ("" during registration);
	// m.login.password must authenticate as this user.
	UserID string
	// Params are the stage parameters sent to the client.
	Params map[string]any
}

// UIAResult is what a completed authentication proved.
type UIAResult struct {
	Session string
	// RegistrationToken is the token used for m.login.registration_token.
	RegistrationToken string
}

type uiaData struct {
	RegistrationToken string `json:"registration_token,omitempty"`
}

// CheckUIA runs one round of user-interactive authentication. It returns a
// result when a flow is complete; otherwise an error to send: 401 with the
// flows (and the failure of the stage just tried, if any).
func (s *Service) CheckUIA(ctx context.Context, u UIA, auth *AuthDict) (*UIAResult, error) {
	if auth == nil {
		sid, err := s.newUIASession(ctx, u.UserID)
		if err != nil {
			return nil, err
		}
		return nil, s.uiaChallenge(u, sid, nil, nil)
	}
	sid := auth.Session
	var completed []string
	var data uiaData
	if sid == "" {
		var err error
		if sid, err = s.newUIASession(ctx, u.UserID); err != nil {
			return nil, err
		}
	} else {
		var err error
		completed, data, err = s.loadUIASession(ctx, sid, u.UserID)
		if err != nil {
			return nil, err
		}
	}
	if auth.Type != "" && !slices.Contains(completed, auth.Type) {
		if !flowsAllow(u.Flows, auth.Type) {
			return nil, s.uiaChallenge(u, sid, completed, httpx.BadJSON("Authentication stage %q is not offered here", auth.Type))
		}
		if err := s.checkStage(ctx, u, auth, &data); err != nil {
			if err == errWrongUser {
				return nil, err
			}
			return nil, s.uiaChallenge(u, sid, completed, err)
		}
		completed = append(completed, auth.Type)
		if err := s.saveUIASession(ctx, sid, completed, data); err != nil {
			return nil, err
		}
	}
	for _, flow := range u.Flows {
		if containsAll(completed, flow) {
			_, _ = s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, sid)
			return &UIAResult{Session: sid, RegistrationToken: data.RegistrationToken}, nil
		}
	}
	return nil, s.uiaChallenge(u, sid, completed, nil)
}

// errWrongUser is the answer to a password stage naming another user than
// the one the request acts for.
var errWrongUser = httpx.Forbidden("Authentication must be for the requesting user")

// checkStage verifies one stage's credentials.
func (s *Service) checkStage(ctx context.Context, u UIA, auth *AuthDict, data *uiaData) error {
	switch auth.Type {
	case StageDummy:
		return nil
	case StagePassword:
		user := auth.User
		if auth.Identifier != nil {
			if auth.Identifier.Type != "m.id.user" {
				return httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Only m.id.user identifiers are supported")
			}
			user = auth.Identifier.User
		}
		local, ok := s.LocalpartOf(user)
		if !ok || s.UserID(local) != u.UserID {
			// Authenticating as someone else is refused outright (403), not
			// answered with another challenge.
			return errWrongUser
		}
		acct, err := s.GetUser(ctx, u.UserID)
		if err != nil {
			return err
		}
		if acct == nil || acct.Deactivated || !CheckPassword(acct.PasswordHash, auth.Password) {
			return httpx.Forbidden("Invalid username or password")
		}
		return nil
	case StageRegistrationToken:
		ok, err := s.RegistrationTokenValid(ctx, auth.Token)
		if err != nil {
			return err
		}
		if !ok {
			return httpx.NewError(http.StatusUnauthorized, "M_FORBIDDEN", "Invalid registration token")
		}
		data.RegistrationToken = auth.Token
		return nil
	}
	return httpx.BadJSON("Unknown authentication stage %q", auth.Type)
}

func (s *Service) uiaChallenge(u UIA, sid string, completed []string, stageErr error) error {
	flows := make([]map[string]any, len(u.Flows))
	for i, f := range u.Flows {
		flows[i] = map[string]any{"stages": f}
	}
	params := u.Params
	if params == nil {
		params = map[string]any{}
	}
	e := &httpx.Error{Status: http.StatusUnauthorized, ErrCode: "", Extra: map[string]any{
		"flows": flows, "params": params, "session": sid,
	}}
	if len(completed) > 0 {
		e.Extra["completed"] = completed
	}
	var me *httpx.Error
	if stageErr != nil {
		if !errors.As(stageErr, &me) {
			return stageErr
		}
		e.ErrCode, e.Message = me.ErrCode, me.Message
	}
	return e
}

func (s *Service) newUIASession(ctx context.Context, userID string) (string, error) {
	sid := NewToken("")[:24]
	now := time.Now().UnixMilli()
	_, err := s.db.Exec(ctx, `INSERT INTO uia_sessions (session_id, created_ts, user_id) VALUES ($1, $2, $3)`, sid, now, userID)
	if err != nil {
		return "", err
	}
	// Opportunistic clean-up of abandoned sessions.
	_, _ = s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE created_ts < $1`, now-uiaSessionLifetime.Milliseconds())
	return sid, nil
}

func (s *Service) loadUIASession(ctx context.Context, sid, userID string) ([]string, uiaData, error) {
	var completedJSON, dataJSON, owner string
	var created int64
	var data uiaData
	err := s.db.QueryRow(ctx, `SELECT completed, data, user_id, created_ts FROM uia_sessions WHERE session_id = $1`, sid).
		Scan(&completedJSON, &dataJSON, &owner, &created)
	if errors.Is(err, db.ErrNoRows) || (err == nil && time.Since(time.UnixMilli(created)) > uiaSessionLifetime) {
		return nil, data, httpx.NewError(http.StatusBadRequest, "M_UNKNOWN", "Unknown or expired UIA session")
	}
	if err != nil {
		return nil, data, err
	}
	if owner != userID {
		return nil, data, httpx.Forbidden("UIA session belongs to another user")
	}
	var completed []string
	_ = json.Unmarshal([]byte(completedJSON), &completed)
	_ = json.Unmarshal([]byte(dataJSON), &data)
	return completed, data, nil
}

func (s *Service) saveUIASession(ctx context.Context, sid string, completed []string, data uiaData) error {
	c, _ := json.Marshal(completed)
	d, _ := json.Marshal(data)
	_, err := s.db.Exec(ctx, `UPDATE uia_sessions SET completed = $1, data = $2 WHERE session_id = $3`, string(c), string(d), sid)
	return err
}

func flowsAllow(flows [][]string, stage string) bool {
	for _, f := range flows {
		if slices.Contains(f, stage) {
			return true
		}
	}
	return false
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
