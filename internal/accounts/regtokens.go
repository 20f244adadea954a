package accounts

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// RegistrationToken is a token that lets someone register while
// registration is not open.
type RegistrationToken struct {
	Token       string
	UsesAllowed *int64 // nil: unlimited
	Completed   int64
	ExpiryTS    *int64 // nil: never expires
}

// CreateRegistrationToken stores a new token. An empty token gets a random
// one; usesAllowed ≤ 0 means unlimited; expiry zero means never.
func (s *Service) CreateRegistrationToken(ctx context.Context, token string, usesAllowed int64, expiry time.Time) (*RegistrationToken, error) {
	if token == "" {
		token = NewToken("")[:16]
	}
	if len(token) > 64 {
		return nil, httpx.InvalidParam("Registration token is longer than 64 characters")
	}
	for _, r := range token {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '~' || r == '-') {
			return nil, httpx.InvalidParam("Registration tokens may contain only A-Z a-z 0-9 . _ ~ -")
		}
	}
	t := &RegistrationToken{Token: token}
	if usesAllowed > 0 {
		t.UsesAllowed = &usesAllowed
	}
	if !expiry.IsZero() {
		ms := expiry.UnixMilli()
		t.ExpiryTS = &ms
	}
	_, err := s.db.Exec(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_ts, created_ts) VALUES ($1, $2, $3, $4)`,
		t.Token, t.UsesAllowed, t.ExpiryTS, time.Now().UnixMilli())
	if db.IsUniqueViolation(err) {
		return nil, httpx.NewError(http.StatusBadRequest, "M_INVALID_PARAM", "Registration token already exists")
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// RegistrationTokenValid reports whether token exists, has uses left and has
// not expired.
func (s *Service) RegistrationTokenValid(ctx context.Context, token string) (bool, error) {
	if token == "" {
		return false, nil
	}
	var uses, expiry *int64
	var completed int64
	err := s.db.QueryRow(ctx, `SELECT uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = $1`, token).Scan(&uses, &completed, &expiry)
	if errors.Is(err, db.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if uses != nil && completed >= *uses {
		return false, nil
	}
	if expiry != nil && time.Now().UnixMilli() >= *expiry {
		return false, nil
	}
	return true, nil
}

// useRegistrationToken counts one completed registration against token,
// inside the registration's transaction; it fails if the token ran out
// meanwhile.
func useRegistrationToken(ctx context.Context, tx *db.Tx, token string, now int64) error {
	res, err := tx.Exec(ctx, `UPDATE registration_tokens SET completed = completed + 1
		WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > $2)`, token, now)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return httpx.NewError(http.StatusUnauthorized, "M_FORBIDDEN", "Registration token is no longer valid")
	}
	return nil
}

// FirstStartToken returns a registration token for the first account of a
// server that has no accounts: a still-valid one-use token if one exists,
// else a new one. It returns "" once any account exists.
func (s *Service) FirstStartToken(ctx context.Context) (string, error) {
	var n int64
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM users`).Scan(&n); err != nil || n > 0 {
		return "", err
	}
	var tok string
	err := s.db.QueryRow(ctx, `SELECT token FROM registration_tokens WHERE uses_allowed = 1 AND completed = 0 AND expiry_ts IS NULL ORDER BY created_ts LIMIT 1`).Scan(&tok)
	if err == nil {
		return tok, nil
	}
	if !errors.Is(err, db.ErrNoRows) {
		return "", err
	}
	t, err := s.CreateRegistrationToken(ctx, "", 1, time.Time{})
	if err != nil {
		return "", err
	}
	return t.Token, nil
}
