package rooms

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// ResolveAlias returns the room ID of a local alias, or "".
func (e *Engine) ResolveAlias(ctx context.Context, alias string) (string, error) {
	var roomID string
	err := e.db.QueryRow(ctx, `SELECT room_id FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID)
	if errors.Is(err, db.ErrNoRows) {
		return "", nil
	}
	return roomID, err
}

// SetAlias points a new local alias at a room; M_ROOM_IN_USE if it exists.
func (e *Engine) SetAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := e.db.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`, alias, roomID, creator)
	if db.IsUniqueViolation(err) {
		return httpx.NewError(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	return err
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
