package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Server-side key backups (client-server spec, "Server-side key backups").
// A user has numbered backup versions, of which the newest one not deleted
// is current; keys are written to the current version only. A version's
// etag changes whenever its keys do, and count is its number of keys.

func (s *Service) backupRoutes(rt *httpx.Router) {
	const p = "/_matrix/client/v3/room_keys"
	rt.Authed("POST "+p+"/version", s.handleCreateBackup)
	rt.Authed("GET "+p+"/version", s.handleGetBackup)
	rt.Authed("GET "+p+"/version/{version}", s.handleGetBackup)
	rt.Authed("PUT "+p+"/version/{version}", s.handleUpdateBackup)
	rt.Authed("DELETE "+p+"/version/{version}", s.handleDeleteBackup)
	for _, sub := range []string{"", "/{roomId}", "/{roomId}/{sessionId}"} {
		rt.Authed("PUT "+p+"/keys"+sub, s.handlePutBackupKeys)
		rt.Authed("GET "+p+"/keys"+sub, s.handleGetBackupKeys)
		rt.Authed("DELETE "+p+"/keys"+sub, s.handleDeleteBackupKeys)
	}
}

// backupVersion is a version's row.
type backupVersion struct {
	version   int64
	algorithm string
	authData  string
	etag      int64
	deleted   bool
}

var (
	errNoBackup      = httpx.NotFound("No current backup version")
	errUnknownBackup = httpx.NotFound("Unknown backup version")
)

// parseVersion reads a version as the client sent it; versions that are
// not numbers name no backup.
func parseVersion(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, errUnknownBackup
	}
	return n, nil
}

// getVersion loads one version (nil if it never existed) or, with version
// 0, the current one (nil if none).
func (s *Service) getVersion(ctx context.Context, userID string, version int64) (*backupVersion, error) {
	q := `SELECT version, algorithm, auth_data, etag, deleted FROM e2ee_backup_versions WHERE user_id = $1 AND version = $2`
	args := []any{userID, version}
	if version == 0 {
		q = `SELECT version, algorithm, auth_data, etag, deleted FROM e2ee_backup_versions WHERE user_id = $1 AND deleted = FALSE
			ORDER BY version DESC LIMIT 1`
		args = args[:1]
	}
	var b backupVersion
	err := s.db.QueryRow(ctx, q, args...).Scan(&b.version, &b.algorithm, &b.authData, &b.etag, &b.deleted)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// backupInfo is the body of GET /room_keys/version.
type backupInfo struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int64           `json:"count"`
	ETag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// backupAlgorithmRequest is the body of POST and PUT /room_keys/version.
type backupAlgorithmRequest struct {
	Algorithm *string         `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   *string         `json:"version"`
}

// check requires an algorithm and an auth_data object.
func (b *backupAlgorithmRequest) check() error {
	if b.Algorithm == nil || !present(b.AuthData) {
		return httpx.MissingParam("algorithm and auth_data are required")
	}
	if !validText(*b.Algorithm) {
		return httpx.InvalidParam("Invalid algorithm")
	}
	if b.AuthData[0] != '{' {
		return httpx.BadJSON("auth_data must be an object")
	}
	return nil
}

func (s *Service) handleCreateBackup(r *http.Request, p *httpx.Principal) (any, error) {
	var req backupAlgorithmRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	var version int64
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM e2ee_backup_versions WHERE user_id = $1`, p.UserID).Scan(&version); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO e2ee_backup_versions (user_id, version, algorithm, auth_data) VALUES ($1, $2, $3, $4)`,
			p.UserID, version, *req.Algorithm, string(req.AuthData))
		return err
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": strconv.FormatInt(version, 10)}, nil
}

func (s *Service) handleGetBackup(r *http.Request, p *httpx.Principal) (any, error) {
	ctx := r.Context()
	var want int64
	if v := r.PathValue("version"); v != "" {
		var err error
		if want, err = parseVersion(v); err != nil {
			return nil, err
		}
	}
	b, err := s.getVersion(ctx, p.UserID, want)
	if err != nil {
		return nil, err
	}
	if b == nil || b.deleted {
		if want == 0 {
			return nil, errNoBackup
		}
		return nil, errUnknownBackup
	}
	count, err := s.backupCount(ctx, p.UserID, b.version)
	if err != nil {
		return nil, err
	}
	return backupInfo{Algorithm: b.algorithm, AuthData: json.RawMessage(b.authData), Count: count,
		ETag: strconv.FormatInt(b.etag, 10), Version: strconv.FormatInt(b.version, 10)}, nil
}

func (s *Service) handleUpdateBackup(r *http.Request, p *httpx.Principal) (any, error) {
	var req backupAlgorithmRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	version, err := parseVersion(r.PathValue("version"))
	if err != nil {
		return nil, err
	}
	if req.Version != nil && *req.Version != r.PathValue("version") {
		return nil, httpx.InvalidParam("The version in the body does not match the path")
	}
	ctx := r.Context()
	b, err := s.getVersion(ctx, p.UserID, version)
	if err != nil {
		return nil, err
	}
	if b == nil || b.deleted {
		return nil, errUnknownBackup
	}
	if b.algorithm != *req.Algorithm {
		return nil, httpx.InvalidParam("The algorithm does not match the backup's")
	}
	if _, err := s.db.Exec(ctx, `UPDATE e2ee_backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2`,
		p.UserID, version, string(req.AuthData)); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// handleDeleteBackup deletes a version and its keys. Deleting a version
// deleted before succeeds.
func (s *Service) handleDeleteBackup(r *http.Request, p *httpx.Principal) (any, error) {
	version, err := parseVersion(r.PathValue("version"))
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	b, err := s.getVersion(ctx, p.UserID, version)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, errUnknownBackup
	}
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2`, p.UserID, version); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE e2ee_backup_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2`, p.UserID, version)
		return err
	})
	if err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// backupCount is the number of keys in a version.
func (s *Service) backupCount(ctx context.Context, userID string, version int64) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2`, userID, version).Scan(&n)
	return n, err
}

// keyBackupData is one session's backup (KeyBackupData).
type keyBackupData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// check requires every field, with sane values.
func (k *keyBackupData) check(where string) error {
	if k.FirstMessageIndex == nil || k.ForwardedCount == nil || k.IsVerified == nil || !present(k.SessionData) {
		return httpx.MissingParam("%s needs first_message_index, forwarded_count, is_verified and session_data", where)
	}
	if *k.FirstMessageIndex < 0 || *k.ForwardedCount < 0 {
		return httpx.InvalidParam("%s: first_message_index and forwarded_count must not be negative", where)
	}
	if k.SessionData[0] != '{' {
		return httpx.BadJSON("%s: session_data must be an object", where)
	}
	return nil
}

// better reports whether k should replace old under the spec's rules: a
// verified key beats an unverified one, then the lower first message
// index wins, then the lower forwarded count. An equal key changes nothing.
func (k *keyBackupData) better(old *keyBackupData) bool {
	if *k.IsVerified != *old.IsVerified {
		return *k.IsVerified
	}
	if *k.FirstMessageIndex != *old.FirstMessageIndex {
		return *k.FirstMessageIndex < *old.FirstMessageIndex
	}
	return *k.ForwardedCount < *old.ForwardedCount
}

// roomKeyBackup is the backup of one room (RoomKeyBackup).
type roomKeyBackup struct {
	Sessions map[string]*keyBackupData `json:"sessions"`
}

// backupScope is the part of a backup a /room_keys/keys request addresses:
// all rooms, one room, or one session.
type backupScope struct {
	roomID, sessionID string
}

// scopeOf reads the scope of a /room_keys/keys request from its path.
func scopeOf(r *http.Request) backupScope {
	return backupScope{roomID: r.PathValue("roomId"), sessionID: r.PathValue("sessionId")}
}

// parseScope reads and checks the scope of a /room_keys/keys request.
func parseScope(r *http.Request) (backupScope, error) {
	sc := scopeOf(r)
	return sc, sc.check()
}

// check refuses a malformed room or session ID.
func (sc backupScope) check() error {
	if sc.roomID != "" {
		if _, err := spec.NewRoomID(sc.roomID); err != nil || len(sc.roomID) > maxIDLen {
			return httpx.InvalidParam("Invalid room ID")
		}
	}
	if sc.sessionID != "" && !validText(sc.sessionID) {
		return httpx.InvalidParam("Invalid session ID")
	}
	return nil
}

// where restricts a query on e2ee_backup_keys ($1 user, $2 version) to the
// scope, with the scope's arguments.
func (sc backupScope) where() (string, []any) {
	switch {
	case sc.sessionID != "":
		return ` AND room_id = $3 AND session_id = $4`, []any{sc.roomID, sc.sessionID}
	case sc.roomID != "":
		return ` AND room_id = $3`, []any{sc.roomID}
	}
	return "", nil
}

// requestedVersion reads the required version query parameter.
func requestedVersion(r *http.Request) (string, error) {
	q := r.URL.Query()
	if !q.Has("version") {
		return "", httpx.MissingParam("Missing version")
	}
	return q.Get("version"), nil
}

// updateResponse is the answer to a change of keys (RoomKeysUpdateResponse).
func (s *Service) updateResponse(ctx context.Context, userID string, version int64) (any, error) {
	b, err := s.getVersion(ctx, userID, version)
	if err != nil {
		return nil, err
	}
	count, err := s.backupCount(ctx, userID, version)
	if err != nil {
		return nil, err
	}
	return map[string]any{"etag": strconv.FormatInt(b.etag, 10), "count": count}, nil
}

func (s *Service) handlePutBackupKeys(r *http.Request, p *httpx.Principal) (any, error) {
	sc := scopeOf(r)
	rooms, err := decodeBackupKeys(r, sc)
	if err != nil {
		return nil, err
	}
	if err := sc.check(); err != nil {
		return nil, err
	}
	v, err := requestedVersion(r)
	if err != nil {
		return nil, err
	}
	if err := checkRoomKeyBackups(rooms); err != nil {
		return nil, err
	}
	ctx := r.Context()
	version, err := s.writableVersion(ctx, p.UserID, v)
	if err != nil {
		return nil, err
	}
	if err := s.storeBackupKeys(ctx, p.UserID, version, rooms); err != nil {
		return nil, err
	}
	return s.updateResponse(ctx, p.UserID, version)
}

// decodeBackupKeys reads the body of a PUT /room_keys/keys request, whose
// shape depends on the scope, as the keys of each room.
func decodeBackupKeys(r *http.Request, sc backupScope) (map[string]*roomKeyBackup, error) {
	rooms := map[string]*roomKeyBackup{}
	switch {
	case sc.sessionID != "":
		var k keyBackupData
		if err := httpx.DecodeJSON(r, &k); err != nil {
			return nil, err
		}
		rooms[sc.roomID] = &roomKeyBackup{Sessions: map[string]*keyBackupData{sc.sessionID: &k}}
	case sc.roomID != "":
		var rb roomKeyBackup
		if err := httpx.DecodeJSON(r, &rb); err != nil {
			return nil, err
		}
		rooms[sc.roomID] = &rb
	default:
		var body struct {
			Rooms map[string]*roomKeyBackup `json:"rooms"`
		}
		if err := httpx.DecodeJSON(r, &body); err != nil {
			return nil, err
		}
		if body.Rooms == nil {
			return nil, httpx.MissingParam("Missing rooms")
		}
		rooms = body.Rooms
	}
	return rooms, nil
}

// checkRoomKeyBackups checks every room ID, session ID and key.
func checkRoomKeyBackups(rooms map[string]*roomKeyBackup) error {
	for roomID, rb := range rooms {
		if _, err := spec.NewRoomID(roomID); err != nil || len(roomID) > maxIDLen {
			return httpx.InvalidParam("Invalid room ID %q", roomID)
		}
		if rb == nil || rb.Sessions == nil {
			return httpx.MissingParam("The backup of room %s needs sessions", roomID)
		}
		for sessionID, k := range rb.Sessions {
			if !validText(sessionID) {
				return httpx.InvalidParam("Invalid session ID in room %s", roomID)
			}
			if k == nil {
				return httpx.BadJSON("The key of session %s must be an object", sessionID)
			}
			if err := k.check("session " + sessionID); err != nil {
				return err
			}
		}
	}
	return nil
}

// writableVersion resolves the version keys are written to: it must be
// the current one (403 M_WRONG_ROOM_KEYS_VERSION names the current one).
func (s *Service) writableVersion(ctx context.Context, userID, v string) (int64, error) {
	current, err := s.getVersion(ctx, userID, 0)
	if err != nil {
		return 0, err
	}
	version, err := parseVersion(v)
	if err != nil {
		return 0, err
	}
	if current == nil {
		return 0, errUnknownBackup
	}
	if version != current.version {
		b, err := s.getVersion(ctx, userID, version)
		if err != nil {
			return 0, err
		}
		if b == nil || b.deleted {
			return 0, errUnknownBackup
		}
		return 0, httpx.NewError(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version").
			With("current_version", strconv.FormatInt(current.version, 10))
	}
	return version, nil
}

// storeBackupKeys stores keys in a version, each replacing the stored key
// of its session only if it is better; the etag changes if any key did.
func (s *Service) storeBackupKeys(ctx context.Context, userID string, version int64, rooms map[string]*roomKeyBackup) error {
	return s.db.WriteTx(ctx, func(tx *db.Tx) error {
		changed := false
		for roomID, rb := range rooms {
			for sessionID, k := range rb.Sessions {
				var old keyBackupData
				var fmi, fc int64
				var verified bool
				err := tx.QueryRow(ctx, `SELECT first_message_index, forwarded_count, is_verified FROM e2ee_backup_keys
					WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`, userID, version, roomID, sessionID).
					Scan(&fmi, &fc, &verified)
				switch {
				case errors.Is(err, db.ErrNoRows):
				case err != nil:
					return err
				default:
					old = keyBackupData{FirstMessageIndex: &fmi, ForwardedCount: &fc, IsVerified: &verified}
					if !k.better(&old) {
						continue
					}
				}
				if _, err := tx.Exec(ctx, `INSERT INTO e2ee_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
					ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET first_message_index = excluded.first_message_index,
						forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified, session_data = excluded.session_data`,
					userID, version, roomID, sessionID, *k.FirstMessageIndex, *k.ForwardedCount, *k.IsVerified, string(k.SessionData)); err != nil {
					return err
				}
				changed = true
			}
		}
		if !changed {
			return nil
		}
		_, err := tx.Exec(ctx, `UPDATE e2ee_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2`, userID, version)
		return err
	})
}

// readableVersion resolves the version keys are read from or deleted in:
// any version that exists and is not deleted.
func (s *Service) readableVersion(ctx context.Context, userID, v string) (int64, error) {
	version, err := parseVersion(v)
	if err != nil {
		return 0, err
	}
	b, err := s.getVersion(ctx, userID, version)
	if err != nil {
		return 0, err
	}
	if b == nil || b.deleted {
		return 0, errUnknownBackup
	}
	return version, nil
}

// backupRequest reads the scope (room, session) and the existing backup
// version a request to GET or DELETE /room_keys/keys addresses.
func (s *Service) backupRequest(r *http.Request, p *httpx.Principal) (backupScope, int64, error) {
	sc, err := parseScope(r)
	if err != nil {
		return sc, 0, err
	}
	v, err := requestedVersion(r)
	if err != nil {
		return sc, 0, err
	}
	version, err := s.readableVersion(r.Context(), p.UserID, v)
	return sc, version, err
}

func (s *Service) handleGetBackupKeys(r *http.Request, p *httpx.Principal) (any, error) {
	sc, version, err := s.backupRequest(r, p)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	cond, args := sc.where()
	rows, err := s.db.Query(ctx, `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
		FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2`+cond, append([]any{p.UserID, version}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	rooms := map[string]*roomKeyBackup{}
	for rows.Next() {
		var roomID, sessionID, data string
		k := &keyBackupData{FirstMessageIndex: new(int64), ForwardedCount: new(int64), IsVerified: new(bool)}
		if err := rows.Scan(&roomID, &sessionID, k.FirstMessageIndex, k.ForwardedCount, k.IsVerified, &data); err != nil {
			return nil, err
		}
		k.SessionData = json.RawMessage(data)
		if rooms[roomID] == nil {
			rooms[roomID] = &roomKeyBackup{Sessions: map[string]*keyBackupData{}}
		}
		rooms[roomID].Sessions[sessionID] = k
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	switch {
	case sc.sessionID != "":
		rb := rooms[sc.roomID]
		if rb == nil {
			return nil, httpx.NotFound("No key for this session in the backup")
		}
		return rb.Sessions[sc.sessionID], nil
	case sc.roomID != "":
		if rb := rooms[sc.roomID]; rb != nil {
			return rb, nil
		}
		return roomKeyBackup{Sessions: map[string]*keyBackupData{}}, nil
	}
	return map[string]any{"rooms": rooms}, nil
}

func (s *Service) handleDeleteBackupKeys(r *http.Request, p *httpx.Principal) (any, error) {
	sc, version, err := s.backupRequest(r, p)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	cond, args := sc.where()
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2`+cond, append([]any{p.UserID, version}, args...)...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE e2ee_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2`, p.UserID, version)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.updateResponse(ctx, p.UserID, version)
}
