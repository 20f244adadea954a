package rooms

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// ResolveAlias returns the room ID of a local alias, or "".
func (e *Engine) ResolveAlias(ctx context.Context, alias string) (string, error) {
	roomID, _, err := e.aliasEntry(ctx, alias)
	return roomID, err
}

// aliasEntry returns the room and the creator of a local alias, or "" for
// an unknown alias.
func (e *Engine) aliasEntry(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = e.db.QueryRow(ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	if errors.Is(err, db.ErrNoRows) {
		return "", "", nil
	}
	return roomID, creator, err
}

// SetAlias points a new local alias at a room; 409 M_UNKNOWN if it exists.
func (e *Engine) SetAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := e.db.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`, alias, roomID, creator)
	if db.IsUniqueViolation(err) {
		return httpx.NewError(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	return err
}

// LocalAliases lists the local aliases of a room, sorted.
func (e *Engine) LocalAliases(ctx context.Context, roomID string) ([]string, error) {
	rows, err := e.db.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetPublished adds a room to, or removes it from, the public room directory.
func (e *Engine) SetPublished(ctx context.Context, roomID string, published bool) error {
	_, err := e.db.Exec(ctx, `UPDATE rooms SET published = $1 WHERE room_id = $2`, published, roomID)
	return err
}

// ParseAlias splits a room alias "#local:server" and checks its grammar.
func ParseAlias(alias string) (local, server string, err error) {
	bad := httpx.InvalidParam("Invalid room alias %q", alias)
	if len(alias) > 255 || !strings.HasPrefix(alias, "#") {
		return "", "", bad
	}
	local, server, ok := strings.Cut(alias[1:], ":")
	if !ok || local == "" || strings.ContainsAny(local, ":\x00") {
		return "", "", bad
	}
	if config.ValidateServerName(server) != nil {
		return "", "", bad
	}
	return local, server, nil
}

// randomString returns n random letters and digits.
func randomString(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// isLocalAlias reports whether alias is a well-formed alias of this server.
func (e *Engine) isLocalAlias(alias string) bool {
	_, server, err := ParseAlias(alias)
	return err == nil && server == string(e.serverName)
}

// aliasRoutes registers the room alias endpoints.
func (e *Engine) aliasRoutes(rt *httpx.Router) {
	rt.Authed("PUT /_matrix/client/v3/directory/room/{roomAlias}", e.handlePutAlias)
	rt.Public("GET /_matrix/client/v3/directory/room/{roomAlias}", e.handleGetAlias)
	rt.Authed("DELETE /_matrix/client/v3/directory/room/{roomAlias}", e.handleDeleteAlias)
	rt.Authed("GET /_matrix/client/v3/rooms/{roomId}/aliases", e.handleRoomAliases)
}

// handlePutAlias creates a local alias. Like Synapse, it requires the user
// to be joined to the room (server admins are exempt) and refuses
// whitespace in the local part, which the grammar allows but no client can
// type back.
func (e *Engine) handlePutAlias(r *http.Request, p *httpx.Principal) (any, error) {
	alias := r.PathValue("roomAlias")
	local, server, err := ParseAlias(alias)
	if err != nil {
		return nil, err
	}
	if strings.ContainsFunc(local, unicode.IsSpace) {
		return nil, httpx.InvalidParam("Room aliases may not contain whitespace")
	}
	if server != string(e.serverName) {
		return nil, httpx.InvalidParam("Room alias must be local to %s", e.serverName)
	}
	var body struct {
		RoomID string `json:"room_id"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.RoomID == "" {
		return nil, httpx.MissingParam("room_id is required")
	}
	if !strings.HasPrefix(body.RoomID, "!") || len(body.RoomID) > 255 {
		return nil, httpx.InvalidParam("Invalid room ID %q", body.RoomID)
	}
	ctx := r.Context()
	if ok, err := e.RoomExists(ctx, body.RoomID); err != nil {
		return nil, err
	} else if !ok {
		return nil, httpx.NotFound("Room %s not found", body.RoomID)
	}
	if !p.IsAdmin {
		if m, err := e.Membership(ctx, body.RoomID, p.UserID); err != nil {
			return nil, err
		} else if m != spec.Join {
			return nil, httpx.Forbidden("You must be in the room to create an alias for it")
		}
	}
	if err := e.SetAlias(ctx, alias, body.RoomID, p.UserID); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// handleGetAlias resolves an alias. Remote aliases are asked of their
// server (Federation.ResolveAlias); without federation they answer 404.
func (e *Engine) handleGetAlias(r *http.Request) (any, error) {
	alias := r.PathValue("roomAlias")
	_, server, err := ParseAlias(alias)
	if err != nil {
		return nil, err
	}
	if server != string(e.serverName) {
		if e.Federation.ResolveAlias != nil {
			roomID, servers, err := e.Federation.ResolveAlias(r.Context(), alias)
			if err != nil {
				return nil, err
			}
			return map[string]any{"room_id": roomID, "servers": servers}, nil
		}
		return nil, httpx.NotFound("Room alias %s not found: remote aliases cannot be resolved yet", alias)
	}
	ctx := r.Context()
	roomID, err := e.ResolveAlias(ctx, alias)
	if err != nil {
		return nil, err
	}
	if roomID == "" {
		return nil, httpx.NotFound("Room alias %s not found", alias)
	}
	servers, err := e.residentServers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": servers}, nil
}

// residentServers lists the servers with joined members in a room, this
// server first (it answers for the alias), the others sorted.
func (e *Engine) residentServers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := e.db.Query(ctx, `SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	seen := map[string]bool{string(e.serverName): true}
	var others []string
	for rows.Next() {
		var userID string
		if err := rows.Scan(&userID); err != nil {
			return nil, err
		}
		if _, server, ok := strings.Cut(userID, ":"); ok && !seen[server] {
			seen[server] = true
			others = append(others, server)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	slices.Sort(others)
	return append([]string{string(e.serverName)}, others...), nil
}

// handleDeleteAlias removes a local alias. The alias's creator, a server
// admin or a room member with power to send m.room.canonical_alias may.
// The alias is then dropped from the room's m.room.canonical_alias when it
// is listed there (as the deleting user; failing that is only logged, as
// the spec recommends).
func (e *Engine) handleDeleteAlias(r *http.Request, p *httpx.Principal) (any, error) {
	alias := r.PathValue("roomAlias")
	if _, _, err := ParseAlias(alias); err != nil {
		return nil, err
	}
	ctx := r.Context()
	roomID, creator, err := e.aliasEntry(ctx, alias)
	if err != nil {
		return nil, err
	}
	if roomID == "" {
		return nil, httpx.NotFound("Room alias %s not found", alias)
	}
	if creator != p.UserID {
		if err := e.checkDirectoryPower(ctx, roomID, p, "delete this alias"); err != nil {
			return nil, err
		}
	}
	res, err := e.db.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
	if err != nil {
		return nil, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, httpx.NotFound("Room alias %s not found", alias) // deleted concurrently
	}
	cur, err := e.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil || cur == nil {
		return httpx.Empty, err
	}
	kept, _, changed := splitCanonicalAlias(cur.Content(), func(a string) bool { return a == alias })
	if changed {
		if _, err := e.Send(ctx, roomID, stateSpec(p.UserID, spec.MRoomCanonicalAlias, "", kept)); err != nil {
			slog.Info("cannot update the canonical alias after deleting an alias", "room", roomID, "alias", alias, "err", err)
		}
	}
	return httpx.Empty, nil
}

// checkDirectoryPower allows server admins, and room members whose power
// reaches the level to send m.room.canonical_alias (Synapse's rule for
// editing a room's directory entries); others get 403 naming the action.
func (e *Engine) checkDirectoryPower(ctx context.Context, roomID string, p *httpx.Principal, action string) error {
	if p.IsAdmin {
		return nil
	}
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return err
	}
	if m, err := e.Membership(ctx, roomID, p.UserID); err != nil {
		return err
	} else if m != spec.Join {
		return httpx.Forbidden("You must be in the room to %s", action)
	}
	pw, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return err
	}
	if pw.UserLevel(p.UserID) < pw.levels.EventLevel(spec.MRoomCanonicalAlias, true) {
		return httpx.Forbidden("You do not have the power to %s", action)
	}
	return nil
}

// handleRoomAliases lists a room's local aliases to its joined members,
// to anyone when the room is world-readable, and to server admins.
func (e *Engine) handleRoomAliases(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	if !p.IsAdmin {
		ok, err := e.joinedOrWorldReadable(ctx, roomID, p.UserID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, httpx.Forbidden("You are not in this room")
		}
	}
	aliases, err := e.LocalAliases(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"aliases": aliases}, nil
}

// joinedOrWorldReadable reports whether a user is joined to a room now or
// the room's history is world-readable (false for unknown rooms).
func (e *Engine) joinedOrWorldReadable(ctx context.Context, roomID, userID string) (bool, error) {
	ri, err := e.room(ctx, roomID)
	if errors.Is(err, ErrRoomNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if m, err := e.Membership(ctx, roomID, userID); err != nil || m == spec.Join {
		return err == nil, err
	}
	hv, err := e.stateEvent(ctx, ri, ri.state, spec.MRoomHistoryVisibility, "")
	if err != nil || hv == nil {
		return false, err
	}
	h, _ := hv.HistoryVisibility()
	return string(h) == VisWorldReadable, nil
}

// splitCanonicalAlias splits m.room.canonical_alias content in two: kept is
// the content without the aliases move selects (other keys are kept as
// they are), moved holds the selected alias and alt_aliases. changed
// reports whether anything was selected.
func splitCanonicalAlias(content []byte, move func(alias string) bool) (kept, moved map[string]any, changed bool) {
	kept = map[string]any{}
	moved = map[string]any{}
	if json.Unmarshal(content, &kept) != nil || kept == nil {
		return map[string]any{}, moved, false
	}
	if a, ok := kept["alias"].(string); ok && a != "" && move(a) {
		delete(kept, "alias")
		moved["alias"] = a
		changed = true
	}
	alts, ok := kept["alt_aliases"].([]any)
	if !ok {
		return kept, moved, changed
	}
	var keep, take []any
	for _, v := range alts {
		if a, ok := v.(string); ok && move(a) {
			take = append(take, a)
		} else {
			keep = append(keep, v)
		}
	}
	if len(take) == 0 {
		return kept, moved, changed
	}
	moved["alt_aliases"] = take
	if len(keep) > 0 {
		kept["alt_aliases"] = keep
	} else {
		delete(kept, "alt_aliases")
	}
	return kept, moved, true
}
