package federation

import (
	"errors"
	"net/http"
	"time"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// OpenID: a client asks for a token (POST /user/{userId}/openid/request_token)
// and hands it to a third party, which asks this server who it belongs to
// (GET /_matrix/federation/v1/openid/userinfo, not signed). Tokens are
// stored hashed (openid_tokens) and expire after an hour.

// openIDTokenLifetime is how long an OpenID token is valid.
const openIDTokenLifetime = time.Hour

func (s *Service) handleRequestOpenIDToken(r *http.Request, p *httpx.Principal) (any, error) {
	if r.PathValue("userId") != p.UserID {
		return nil, httpx.Forbidden("You may only request OpenID tokens for yourself")
	}
	var body map[string]any
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	ctx := r.Context()
	now := time.Now()
	if _, err := s.db.Exec(ctx, `DELETE FROM openid_tokens WHERE expires_ts < $1`, now.UnixMilli()); err != nil {
		return nil, err
	}
	token := accounts.NewToken("po_")
	if _, err := s.db.Exec(ctx, `INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`,
		accounts.HashToken(token), p.UserID, now.Add(openIDTokenLifetime).UnixMilli()); err != nil {
		return nil, err
	}
	return map[string]any{
		"access_token":       token,
		"token_type":         "Bearer",
		"matrix_server_name": s.serverName,
		"expires_in":         int64(openIDTokenLifetime / time.Second),
	}, nil
}

func (s *Service) handleOpenIDUserInfo(r *http.Request) (any, error) {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		return nil, httpx.MissingToken()
	}
	var userID string
	err := s.db.QueryRow(r.Context(), `SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts >= $2`,
		accounts.HashToken(token), time.Now().UnixMilli()).Scan(&userID)
	if errors.Is(err, db.ErrNoRows) {
		return nil, httpx.UnknownToken(false)
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"sub": userID}, nil
}
