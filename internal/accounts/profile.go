package accounts

// Profiles (client-server API "Profiles", v1.16 with custom fields):
//
//	GET    /profile/{userId}            the whole profile, no token needed
//	GET    /profile/{userId}/{keyName}  one field, no token needed
//	PUT    /profile/{userId}/{keyName}  set a field of your own profile
//	DELETE /profile/{userId}/{keyName}  remove a field of your own profile
//
// One route serves displayname, avatar_url, m.tz and custom fields alike.
// displayname and avatar_url live in their own columns of the profiles table
// (rooms read them for member events); every other field is kept in the
// fields column as a JSON object.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

const (
	// profileSizeLimit bounds the JSON encoding of a whole profile: the spec
	// requires it to stay under 64 KiB.
	profileSizeLimit = 64 * 1024
	// maxProfileKeyBytes is the longest profile field name the spec allows.
	maxProfileKeyBytes = 255
	// maxDisplaynameChars is Synapse's limit on display names, in characters.
	maxDisplaynameChars = 256
	// maxAvatarURLBytes is Synapse's limit on avatar URLs.
	maxAvatarURLBytes = 1000

	profileDisplayname = "displayname"
	profileAvatarURL   = "avatar_url"
	profileTimeZone    = "m.tz"
)

// profileKeyGrammar is the spec's pattern for keyName: the three defined
// fields or a custom field in the Common Namespaced Identifier Grammar.
var profileKeyGrammar = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

func (s *Service) profileRoutes(rt *httpx.Router) {
	rt.Public("GET /_matrix/client/v3/profile/{userId}", s.handleGetProfile)
	rt.Public("GET /_matrix/client/v3/profile/{userId}/{keyName}", s.handleGetProfileField)
	// Guests may change their display name (and only that): checked below.
	rt.AuthedGuestOK("PUT /_matrix/client/v3/profile/{userId}/{keyName}", s.handleSetProfileField)
	rt.AuthedGuestOK("DELETE /_matrix/client/v3/profile/{userId}/{keyName}", s.handleDeleteProfileField)
}

func (s *Service) handleGetProfile(r *http.Request) (any, error) {
	prof, err := s.lookUpProfile(r.Context(), r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	return prof, nil
}

func (s *Service) handleGetProfileField(r *http.Request) (any, error) {
	key := r.PathValue("keyName")
	if err := checkProfileKey(key); err != nil {
		return nil, err
	}
	prof, err := s.lookUpProfile(r.Context(), r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	v, ok := prof[key]
	if !ok {
		return nil, httpx.NotFound("The profile has no field %s", key)
	}
	return map[string]json.RawMessage{key: v}, nil
}

func (s *Service) handleSetProfileField(r *http.Request, p *httpx.Principal) (any, error) {
	key, err := checkProfileWrite(r, p)
	if err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	value, ok := body[key]
	if !ok {
		return nil, httpx.MissingParam("The request body must contain the key %s", key)
	}
	if err := s.SetProfileField(context.WithoutCancel(r.Context()), p.UserID, key, value); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

func (s *Service) handleDeleteProfileField(r *http.Request, p *httpx.Principal) (any, error) {
	key, err := checkProfileWrite(r, p)
	if err != nil {
		return nil, err
	}
	if err := s.DeleteProfileField(context.WithoutCancel(r.Context()), p.UserID, key); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// checkProfileWrite checks the key name and that the caller may change it:
// only their own profile, and guests only their display name.
func checkProfileWrite(r *http.Request, p *httpx.Principal) (string, error) {
	key := r.PathValue("keyName")
	if err := checkProfileKey(key); err != nil {
		return "", err
	}
	if r.PathValue("userId") != p.UserID {
		return "", httpx.Forbidden("You may only change your own profile")
	}
	if p.IsGuest && key != profileDisplayname {
		return "", httpx.NewError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guests may only change their display name")
	}
	return key, nil
}

// checkProfileKey checks a profile field name against the spec's grammar.
func checkProfileKey(key string) error {
	if len(key) > maxProfileKeyBytes {
		return httpx.NewError(http.StatusBadRequest, "M_KEY_TOO_LARGE", "Profile field names are at most %d bytes long", maxProfileKeyBytes)
	}
	if !profileKeyGrammar.MatchString(key) {
		return httpx.InvalidParam("Invalid profile field name %q: use displayname, avatar_url, m.tz or a namespaced name such as com.example.field", key)
	}
	return nil
}

// splitUserID splits a user ID into its localpart and server name; ok is
// false when it does not have the form @localpart:server.
func splitUserID(userID string) (localpart, server string, ok bool) {
	rest, found := strings.CutPrefix(userID, "@")
	if !found {
		return "", "", false
	}
	localpart, server, found = strings.Cut(rest, ":")
	if !found || localpart == "" || server == "" {
		return "", "", false
	}
	return localpart, server, true
}

// lookUpProfile is the profile of userID as GET /profile answers it: every
// field that is set, keyed by name.
func (s *Service) lookUpProfile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	_, server, ok := splitUserID(userID)
	if !ok {
		return nil, httpx.InvalidParam("%q is not a valid user ID", userID)
	}
	if server != s.cfg.ServerName {
		if s.Hooks.RemoteProfile != nil {
			return s.Hooks.RemoteProfile(ctx, userID)
		}
		return nil, httpx.NotFound("Profiles of users on other servers cannot be looked up")
	}
	row, err := s.readProfile(ctx, s.db, userID)
	if err != nil {
		return nil, err
	}
	return row.fieldMap()
}

// GetProfile returns the display name and avatar URL of a local user (nil
// when unset), for member events and other domains. An unknown user is 404
// M_NOT_FOUND.
func (s *Service) GetProfile(ctx context.Context, userID string) (displayname, avatarURL *string, err error) {
	row, err := s.readProfile(ctx, s.db, userID)
	if err != nil {
		return nil, nil, err
	}
	if row.displayname.Valid {
		displayname = &row.displayname.String
	}
	if row.avatarURL.Valid {
		avatarURL = &row.avatarURL.String
	}
	return displayname, avatarURL, nil
}

// SetProfileField validates and stores one field of a local user's profile
// (value is its JSON value) and, for displayname and avatar_url, runs the
// ProfileChanged hook. An empty displayname or avatar_url removes the field,
// as older clients expect.
func (s *Service) SetProfileField(ctx context.Context, userID, key string, value json.RawMessage) error {
	if err := checkProfileKey(key); err != nil {
		return err
	}
	value, err := normalizeProfileValue(key, value)
	if err != nil {
		return err
	}
	return s.changeProfile(ctx, userID, key, value)
}

// DeleteProfileField removes one field of a local user's profile; removing
// a field that is not set succeeds.
func (s *Service) DeleteProfileField(ctx context.Context, userID, key string) error {
	if err := checkProfileKey(key); err != nil {
		return err
	}
	return s.changeProfile(ctx, userID, key, nil)
}

// normalizeProfileValue checks a field's value and returns the JSON to store,
// or nil when the value removes the field.
func normalizeProfileValue(key string, value json.RawMessage) (json.RawMessage, error) {
	var str string
	switch key {
	case profileDisplayname, profileAvatarURL, profileTimeZone:
		if !isJSONString(value) || json.Unmarshal(value, &str) != nil {
			return nil, httpx.InvalidParam("%s must be a string", key)
		}
		if strings.ContainsRune(str, 0) {
			return nil, httpx.InvalidParam("%s must not contain NUL characters", key)
		}
	default:
		if !json.Valid(value) {
			return nil, httpx.BadJSON("The value of %s is not valid JSON", key)
		}
		return value, nil // the profile's encoding compacts it
	}
	switch key {
	case profileDisplayname:
		str = strings.TrimSpace(str)
		if utf8.RuneCountInString(str) > maxDisplaynameChars {
			return nil, httpx.InvalidParam("The display name is longer than %d characters", maxDisplaynameChars)
		}
		if str == "" {
			return nil, nil
		}
	case profileAvatarURL:
		if str == "" {
			return nil, nil
		}
		if len(str) > maxAvatarURLBytes {
			return nil, httpx.InvalidParam("avatar_url is longer than %d bytes", maxAvatarURLBytes)
		}
		// The spec says mxc://, but Synapse and clients store other URIs
		// too (and Complement sets arbitrary strings); accept any string.
	}
	return json.Marshal(str)
}

// isJSONString reports whether raw is a JSON string (not null, which
// json.Unmarshal accepts into a string).
func isJSONString(raw json.RawMessage) bool {
	t := strings.TrimSpace(string(raw))
	return strings.HasPrefix(t, `"`)
}

// changeProfile sets (value != nil) or removes (value == nil) one field in a
// transaction that holds the profile row, checks the size limit and runs the
// ProfileChanged hook after a displayname or avatar_url change.
func (s *Service) changeProfile(ctx context.Context, userID, key string, value json.RawMessage) error {
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		// Lock the row first (a no-op upsert), so that a concurrent change of
		// another field cannot be lost between our read and our write; this
		// also creates the row for an account that has none.
		if _, err := tx.Exec(ctx, `INSERT INTO profiles (user_id) VALUES ($1) ON CONFLICT (user_id) DO UPDATE SET fields = profiles.fields`, userID); err != nil {
			return fmt.Errorf("lock profile: %w", err)
		}
		row, err := s.readProfile(ctx, tx, userID)
		if err != nil {
			return err
		}
		fields, err := row.fieldMap()
		if err != nil {
			return err
		}
		if value == nil {
			delete(fields, key)
		} else {
			fields[key] = value
			whole, err := json.Marshal(fields)
			if err != nil {
				return err
			}
			if len(whole) >= profileSizeLimit {
				return httpx.NewError(http.StatusBadRequest, "M_PROFILE_TOO_LARGE", "The profile must stay under %d bytes", profileSizeLimit)
			}
		}
		displayname, avatarURL, rest, err := splitProfile(fields)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE profiles SET displayname = $2, avatar_url = $3, fields = $4 WHERE user_id = $1`, userID, displayname, avatarURL, rest)
		return err
	})
	if err != nil {
		return err
	}
	if (key == profileDisplayname || key == profileAvatarURL) && s.Hooks.ProfileChanged != nil {
		// Called even when the value did not change: setting it again is how
		// a user re-propagates a profile; rooms skip member events that
		// would change nothing.
		s.Hooks.ProfileChanged(ctx, userID)
	}
	return nil
}

// profileRow is a user's stored profile. A user without a profiles row has
// an empty profile.
type profileRow struct {
	displayname, avatarURL sql.NullString
	fields                 string // JSON object of the other fields
}

// rowQuerier is what readProfile needs: the database or a transaction.
type rowQuerier interface {
	QueryRow(ctx context.Context, query string, args ...any) *sql.Row
}

// readProfile loads the profile of a local user; 404 M_NOT_FOUND if there
// is no such user.
func (s *Service) readProfile(ctx context.Context, q rowQuerier, userID string) (*profileRow, error) {
	var row profileRow
	var fields sql.NullString
	err := q.QueryRow(ctx, `SELECT p.displayname, p.avatar_url, p.fields FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE u.user_id = $1`, userID).
		Scan(&row.displayname, &row.avatarURL, &fields)
	if errors.Is(err, db.ErrNoRows) {
		return nil, httpx.NotFound("Profile not found")
	}
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	row.fields = fields.String
	return &row, nil
}

// fieldMap is the profile as one object of JSON values.
func (p *profileRow) fieldMap() (map[string]json.RawMessage, error) {
	m := map[string]json.RawMessage{}
	if p.fields != "" {
		if err := json.Unmarshal([]byte(p.fields), &m); err != nil {
			return nil, fmt.Errorf("stored profile fields: %w", err)
		}
	}
	for key, col := range map[string]sql.NullString{profileDisplayname: p.displayname, profileAvatarURL: p.avatarURL} {
		delete(m, key)
		if col.Valid {
			v, err := json.Marshal(col.String)
			if err != nil {
				return nil, err
			}
			m[key] = v
		}
	}
	return m, nil
}

// splitProfile is fieldMap's inverse: the displayname and avatar_url columns
// (nil when unset) and the JSON of the other fields.
func splitProfile(fields map[string]json.RawMessage) (displayname, avatarURL any, rest string, err error) {
	column := func(key string) (any, error) {
		raw, ok := fields[key]
		if !ok {
			return nil, nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("profile field %s: %w", key, err)
		}
		return s, nil
	}
	if displayname, err = column(profileDisplayname); err != nil {
		return nil, nil, "", err
	}
	if avatarURL, err = column(profileAvatarURL); err != nil {
		return nil, nil, "", err
	}
	others := make(map[string]json.RawMessage, len(fields))
	for k, v := range fields {
		if k != profileDisplayname && k != profileAvatarURL {
			others[k] = v
		}
	}
	b, err := json.Marshal(others)
	return displayname, avatarURL, string(b), err
}
