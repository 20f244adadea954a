package accounts

// Account data (client-server API "Client Config"):
//
//	GET/PUT /user/{userId}/account_data/{type}
//	GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}
//
// Global entries are stored with room_id ''. A room's entry never falls back
// to the global one. Clients may read but not write the types the server
// manages (m.fully_read, m.push_rules); the server's own domains write them
// through SetAccountData.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// maxIdentifierBytes bounds event types and room IDs, as the spec bounds
// them in events.
const maxIdentifierBytes = 255

// serverManagedAccountData are the account data types clients may not set
// directly (read markers and push rules have their own endpoints).
var serverManagedAccountData = map[string]bool{
	"m.fully_read": true,
	"m.push_rules": true,
}

func (s *Service) accountDataRoutes(rt *httpx.Router) {
	rt.Authed("GET /_matrix/client/v3/user/{userId}/account_data/{type}", s.handleGetAccountData(false))
	rt.Authed("PUT /_matrix/client/v3/user/{userId}/account_data/{type}", s.handleSetAccountData(false))
	rt.Authed("GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.handleGetAccountData(true))
	rt.Authed("PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.handleSetAccountData(true))
}

// accountDataPath checks the caller and the path of an account data request
// and returns its room ID ("" for global data) and type. inRoom tells
// whether the route has a {roomId}.
func accountDataPath(r *http.Request, p *httpx.Principal, inRoom bool) (roomID, typ string, err error) {
	if r.PathValue("userId") != p.UserID {
		return "", "", httpx.Forbidden("You may only access your own account data")
	}
	if inRoom {
		roomID = r.PathValue("roomId")
		if !validRoomID(roomID) {
			return "", "", httpx.InvalidParam("%q is not a valid room ID", roomID)
		}
	}
	typ = r.PathValue("type")
	if len(typ) > maxIdentifierBytes {
		return "", "", httpx.InvalidParam("Account data types are at most %d bytes long", maxIdentifierBytes)
	}
	return roomID, typ, nil
}

func (s *Service) handleGetAccountData(inRoom bool) httpx.AuthHandler {
	return func(r *http.Request, p *httpx.Principal) (any, error) {
		roomID, typ, err := accountDataPath(r, p, inRoom)
		if err != nil {
			return nil, err
		}
		content, err := s.GetAccountData(r.Context(), p.UserID, roomID, typ)
		if err != nil {
			return nil, err
		}
		if content == nil {
			return nil, httpx.NotFound("No account data of type %s", typ)
		}
		return content, nil
	}
}

func (s *Service) handleSetAccountData(inRoom bool) httpx.AuthHandler {
	return func(r *http.Request, p *httpx.Principal) (any, error) {
		roomID, typ, err := accountDataPath(r, p, inRoom)
		if err != nil {
			return nil, err
		}
		if serverManagedAccountData[typ] {
			return nil, httpx.NewError(http.StatusMethodNotAllowed, "M_BAD_JSON", "Cannot set %s through this API", typ)
		}
		raw, err := httpx.ReadBody(r)
		if err != nil {
			return nil, err
		}
		// Decoding checks that the body is a JSON object, with the usual
		// M_NOT_JSON / M_BAD_JSON answers.
		var obj map[string]json.RawMessage
		if err := httpx.UnmarshalJSON(raw, &obj); err != nil {
			return nil, err
		}
		if roomID != "" {
			if err := s.checkRoomForAccountData(r.Context(), roomID); err != nil {
				return nil, err
			}
		}
		if err := s.SetAccountData(r.Context(), p.UserID, roomID, typ, raw); err != nil {
			return nil, err
		}
		return httpx.Empty, nil
	}
}

// checkRoomForAccountData refuses per-room account data for rooms the
// server does not know, once the rooms domain provides Hooks.RoomExists.
func (s *Service) checkRoomForAccountData(ctx context.Context, roomID string) error {
	if s.Hooks.RoomExists == nil {
		return nil
	}
	ok, err := s.Hooks.RoomExists(ctx, roomID)
	if err != nil {
		return err
	}
	if !ok {
		return httpx.NotFound("Unknown room %s", roomID)
	}
	return nil
}

// SetAccountData stores an account data entry of a user: global when roomID
// is "", else for that room. content must be a JSON object. Unlike the HTTP
// endpoint it accepts every type, so that other domains can maintain the
// server-managed ones (m.fully_read, m.push_rules).
func (s *Service) SetAccountData(ctx context.Context, userID, roomID, typ string, content json.RawMessage) error {
	compact, err := compactJSON(content)
	if err != nil || compact[0] != '{' {
		return httpx.BadJSON("Account data content must be a JSON object")
	}
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		pos, err := db.NextStreamPos(ctx, tx)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, updated_ts, stream_pos) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, updated_ts = excluded.updated_ts, stream_pos = excluded.stream_pos`,
			userID, roomID, typ, string(compact), time.Now().UnixMilli(), pos)
		return err
	})
	if err != nil {
		return fmt.Errorf("set account data: %w", err)
	}
	if s.Hooks.AccountDataChanged != nil {
		s.Hooks.AccountDataChanged(userID)
	}
	return nil
}

// GetAccountData returns the content of a user's account data entry (global
// when roomID is ""), or nil if there is none.
func (s *Service) GetAccountData(ctx context.Context, userID, roomID, typ string) (json.RawMessage, error) {
	var content string
	err := s.db.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`, userID, roomID, typ).Scan(&content)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get account data: %w", err)
	}
	return json.RawMessage(content), nil
}

// validRoomID checks the shape of a room ID: "!" followed by an opaque part
// (with ":server" before room version 12), at most 255 bytes.
func validRoomID(roomID string) bool {
	return len(roomID) > 1 && len(roomID) <= maxIdentifierBytes && roomID[0] == '!'
}

// compactJSON is raw without insignificant white space; it fails unless raw
// is valid JSON.
func compactJSON(raw []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	if buf.Len() == 0 {
		return nil, errors.New("empty JSON")
	}
	return buf.Bytes(), nil
}
