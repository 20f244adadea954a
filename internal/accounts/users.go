package accounts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// User is an account row.
type User struct {
	UserID       string
	Localpart    string
	PasswordHash string
	IsAdmin      bool
	IsGuest      bool
	Deactivated  bool
	CreatedTS    int64
}

// ErrUserExists is returned by CreateUser for a taken user ID.
var ErrUserExists = httpx.NewError(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")

// UserID builds the full user ID of a local localpart.
func (s *Service) UserID(localpart string) string { return "@" + localpart + ":" + s.cfg.ServerName }

// ValidateLocalpart checks the grammar of a new user's localpart: the
// characters a-z 0-9 . _ = - / + and a full user ID no longer than 255
// bytes. It answers M_INVALID_USERNAME.
func (s *Service) ValidateLocalpart(localpart string) error {
	if localpart == "" {
		return httpx.NewError(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID must not be empty")
	}
	for _, r := range localpart {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("._=-/+", r)) {
			return httpx.NewError(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may contain only a-z, 0-9, and . _ = - / +")
		}
	}
	if len(s.UserID(localpart)) > 255 {
		return httpx.NewError(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID is longer than 255 characters")
	}
	return nil
}

// LocalpartOf accepts a localpart or a full user ID of this server and
// returns the localpart (lower-cased, as user IDs are case-insensitive at
// login). ok is false for another server's user.
func (s *Service) LocalpartOf(user string) (string, bool) {
	if strings.HasPrefix(user, "@") {
		local, server, found := strings.Cut(user[1:], ":")
		if !found || server != s.cfg.ServerName {
			return "", false
		}
		user = local
	}
	return strings.ToLower(user), true
}

// CreateUser stores a new account with an empty profile (displayname = the
// localpart). password may be empty for an account that cannot log in with a
// password.
func (s *Service) CreateUser(ctx context.Context, localpart, password string, admin, guest bool) (*User, error) {
	return s.createUser(ctx, localpart, password, admin, guest, nil)
}

// createUser is CreateUser with an extra step run inside the same
// transaction (registration token bookkeeping).
func (s *Service) createUser(ctx context.Context, localpart, password string, admin, guest bool, also func(tx *db.Tx) error) (*User, error) {
	if err := s.ValidateLocalpart(localpart); err != nil {
		return nil, err
	}
	hash := ""
	if password != "" {
		var err error
		if hash, err = HashPassword(password); err != nil {
			return nil, err
		}
	}
	u := &User{UserID: s.UserID(localpart), Localpart: localpart, PasswordHash: hash, IsAdmin: admin, IsGuest: guest, CreatedTS: time.Now().UnixMilli()}
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO users (user_id, localpart, password_hash, is_admin, is_guest, created_ts) VALUES ($1, $2, $3, $4, $5, $6)`,
			u.UserID, u.Localpart, u.PasswordHash, u.IsAdmin, u.IsGuest, u.CreatedTS); err != nil {
			if db.IsUniqueViolation(err) {
				return ErrUserExists
			}
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)`, u.UserID, localpart); err != nil {
			return err
		}
		if also != nil {
			return also(tx)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// GetUser loads a local account by full user ID; nil if there is none.
func (s *Service) GetUser(ctx context.Context, userID string) (*User, error) {
	u := &User{}
	err := s.db.QueryRow(ctx, `SELECT user_id, localpart, password_hash, is_admin, is_guest, deactivated, created_ts FROM users WHERE user_id = $1`, userID).
		Scan(&u.UserID, &u.Localpart, &u.PasswordHash, &u.IsAdmin, &u.IsGuest, &u.Deactivated, &u.CreatedTS)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get user: %w", err)
	}
	return u, nil
}

// UserExists reports whether a local account with that ID exists (active or
// deactivated: IDs are never reused).
func (s *Service) UserExists(ctx context.Context, userID string) (bool, error) {
	u, err := s.GetUser(ctx, userID)
	return u != nil, err
}

// SetPassword replaces a user's password. With logoutDevices set, every
// device except keepDevice is deleted (keepDevice "" = all devices).
func (s *Service) SetPassword(ctx context.Context, userID, password string, logoutDevices bool, keepDevice string) error {
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	var deleted []string
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE users SET password_hash = $1 WHERE user_id = $2`, hash, userID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return httpx.NotFound("No such user")
		}
		if !logoutDevices {
			return nil
		}
		deleted, err = s.deleteDevicesTx(ctx, tx, userID, nil, keepDevice)
		return err
	})
	if err != nil {
		return err
	}
	s.afterDevicesDeleted(ctx, userID, deleted)
	return nil
}
