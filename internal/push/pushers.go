package push

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Pushers: GET /pushers and POST /pushers/set. A pusher belongs to the
// device whose access token created it and is removed with that device.
// last_pos is the stream position of the last notification delivered to
// it, so that a restart neither loses nor repeats notifications.

// notifyPath is the path every HTTP pusher URL must have.
const notifyPath = "/_matrix/push/v1/notify"

// Limits from the spec.
const (
	maxPushkeyBytes = 512
	maxAppIDChars   = 64
)

// Pusher is a pusher as GET /pushers shows it.
type Pusher struct {
	Pushkey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

// storedPusher is a pushers row.
type storedPusher struct {
	Pusher
	userID    string
	pushkeyTS int64 // seconds
	lastPos   int64
}

func (s *Service) pusherRoutes(rt *httpx.Router) {
	rt.Authed("GET /_matrix/client/v3/pushers", s.handleGetPushers)
	rt.Authed("POST /_matrix/client/v3/pushers/set", s.handleSetPusher)
}

const pusherColumns = `user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, pushkey_ts, last_pos`

func scanPusher(scan func(...any) error) (*storedPusher, error) {
	var p storedPusher
	var data string
	if err := scan(&p.userID, &p.AppID, &p.Pushkey, &p.Kind, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag, &p.Lang, &data, &p.pushkeyTS, &p.lastPos); err != nil {
		return nil, err
	}
	p.Data = json.RawMessage(data)
	return &p, nil
}

// pushersWhere lists the pushers matching a WHERE clause.
func (s *Service) pushersWhere(ctx context.Context, where string, args ...any) ([]*storedPusher, error) {
	rows, err := s.db.Query(ctx, `SELECT `+pusherColumns+` FROM pushers WHERE `+where+` ORDER BY app_id, pushkey`, args...)
	if err != nil {
		return nil, fmt.Errorf("pushers: %w", err)
	}
	defer rows.Close()
	var out []*storedPusher
	for rows.Next() {
		p, err := scanPusher(rows.Scan)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *Service) handleGetPushers(r *http.Request, p *httpx.Principal) (any, error) {
	list, err := s.pushersWhere(r.Context(), `user_id = $1`, p.UserID)
	if err != nil {
		return nil, err
	}
	out := make([]Pusher, 0, len(list))
	for _, sp := range list {
		out = append(out, sp.Pusher)
	}
	return map[string][]Pusher{"pushers": out}, nil
}

// setPusherRequest is the body of POST /pushers/set.
type setPusherRequest struct {
	Kind              json.RawMessage `json:"kind"`
	AppID             *string         `json:"app_id"`
	Pushkey           *string         `json:"pushkey"`
	AppDisplayName    *string         `json:"app_display_name"`
	DeviceDisplayName *string         `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag"`
	Lang              *string         `json:"lang"`
	Data              json.RawMessage `json:"data"`
	Append            bool            `json:"append"`
}

func (s *Service) handleSetPusher(r *http.Request, p *httpx.Principal) (any, error) {
	var req setPusherRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	var missing []string
	for _, f := range []struct {
		name    string
		present bool
	}{{"kind", req.Kind != nil}, {"app_id", req.AppID != nil}, {"pushkey", req.Pushkey != nil}} {
		if !f.present {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, httpx.MissingParam("Missing parameters: %s", strings.Join(missing, ", "))
	}
	appID, pushkey := *req.AppID, *req.Pushkey
	if appID == "" || utf8.RuneCountInString(appID) > maxAppIDChars {
		return nil, httpx.InvalidParam("app_id must be 1 to %d characters long", maxAppIDChars)
	}
	if pushkey == "" || len(pushkey) > maxPushkeyBytes {
		return nil, httpx.InvalidParam("pushkey must be 1 to %d bytes long", maxPushkeyBytes)
	}
	ctx := r.Context()
	if string(req.Kind) == "null" {
		if err := s.deletePushers(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, p.UserID, appID, pushkey); err != nil {
			return nil, err
		}
		return httpx.Empty, nil
	}
	var kind string
	if json.Unmarshal(req.Kind, &kind) != nil {
		return nil, httpx.BadJSON("kind must be a string or null")
	}
	switch kind {
	case "http":
	case "email":
		return nil, httpx.InvalidParam("This server does not send e-mail notifications")
	default:
		return nil, httpx.InvalidParam("Unknown pusher kind %q", kind)
	}
	for _, f := range []struct {
		name    string
		present bool
	}{{"app_display_name", req.AppDisplayName != nil}, {"device_display_name", req.DeviceDisplayName != nil}, {"lang", req.Lang != nil}, {"data", !isNull(req.Data)}} {
		if !f.present {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, httpx.MissingParam("Missing parameters: %s", strings.Join(missing, ", "))
	}
	data, err := checkPusherData(req.Data)
	if err != nil {
		return nil, err
	}
	pos, err := s.db.CurrentStreamPos(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now().Unix()
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if !req.Append {
			// Without append, the pushkey belongs to this user only.
			if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`, appID, pushkey, p.UserID); err != nil {
				return err
			}
		}
		// A new pusher starts at the current position: it is not sent the
		// notifications of the past.
		_, err := tx.Exec(ctx, `INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, device_id, pushkey_ts, last_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
			ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, app_display_name = excluded.app_display_name,
				device_display_name = excluded.device_display_name, profile_tag = excluded.profile_tag, lang = excluded.lang,
				data = excluded.data, device_id = excluded.device_id, pushkey_ts = excluded.pushkey_ts`,
			p.UserID, appID, pushkey, kind, *req.AppDisplayName, *req.DeviceDisplayName, req.ProfileTag, *req.Lang, string(data), p.DeviceID, now, pos)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.gateway.ensure(pusherKey{p.UserID, appID, pushkey})
	return httpx.Empty, nil
}

// checkPusherData validates an HTTP pusher's data: an object whose url is
// an http(s) URL with the path /_matrix/push/v1/notify.
func checkPusherData(raw json.RawMessage) (json.RawMessage, error) {
	var data map[string]json.RawMessage
	if json.Unmarshal(raw, &data) != nil {
		return nil, httpx.BadJSON("data must be an object")
	}
	rawURL, ok := data["url"]
	if !ok {
		return nil, httpx.MissingParam("data.url is required for HTTP pushers")
	}
	var s string
	if json.Unmarshal(rawURL, &s) != nil {
		return nil, httpx.BadJSON("data.url must be a string")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return nil, httpx.InvalidParam("data.url must be an http(s) URL")
	}
	if u.Path != notifyPath {
		return nil, httpx.InvalidParam("data.url must have the path %s", notifyPath)
	}
	if f, ok := data["format"]; ok {
		var format string
		if json.Unmarshal(f, &format) != nil {
			return nil, httpx.BadJSON("data.format must be a string")
		}
	}
	return compactJSON(raw), nil
}

// deletePushers deletes the pushers a statement selects. Their delivery
// loops notice on their next round.
func (s *Service) deletePushers(ctx context.Context, query string, args ...any) error {
	if _, err := s.db.Exec(context.WithoutCancel(ctx), query, args...); err != nil {
		return fmt.Errorf("deleting pushers: %w", err)
	}
	return nil
}
