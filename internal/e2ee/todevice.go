package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/sync"
)

// Send-to-device messaging (client-server spec, "Send-to-Device
// messaging"). A message for a local device is a row with a stream
// position; /sync hands it out in order, at most toDeviceLimit per
// response, and deletes it only once the device syncs with a since token at
// or past the response that carried it — so a lost response costs nothing
// and a restart loses nothing. Messages for other servers wait in the
// outbox for the federation sender.

// toDeviceLimit is the most to-device messages one /sync response carries
// (the spec's recommendation).
const toDeviceLimit = 100

// maxEventTypeLen bounds event types, as for room events.
const maxEventTypeLen = 255

// toDeviceMessages is the messages member of /sendToDevice: user ID →
// device ID (or "*") → content.
type toDeviceMessages map[string]map[string]json.RawMessage

func (s *Service) handleSendToDevice(r *http.Request, p *httpx.Principal) (any, error) {
	evType, txnID := r.PathValue("eventType"), r.PathValue("txnId")
	if !validText(evType) || len(evType) > maxEventTypeLen {
		return nil, httpx.InvalidParam("Invalid event type")
	}
	if !validText(txnID) {
		return nil, httpx.InvalidParam("Invalid transaction ID")
	}
	var req struct {
		Messages toDeviceMessages `json:"messages"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Messages == nil {
		return nil, httpx.MissingParam("Missing messages")
	}
	if err := checkToDeviceMessages(req.Messages); err != nil {
		return nil, err
	}
	if err := s.sendToDevice(r.Context(), p.UserID, p.DeviceID, txnID, evType, req.Messages); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// checkToDeviceMessages refuses malformed recipients and contents.
func checkToDeviceMessages(m toDeviceMessages) error {
	for user, byDevice := range m {
		if !validUserID(user) {
			return httpx.InvalidParam("Invalid user ID %q in messages", user)
		}
		for device, content := range byDevice {
			if !validText(device) {
				return httpx.InvalidParam("Invalid device ID in messages for %s", user)
			}
			if len(content) == 0 || content[0] != '{' {
				return httpx.BadJSON("The message for %s's device %s must be an object", user, device)
			}
		}
	}
	return nil
}

// DeliverToDevice stores to-device messages that arrived from another
// server (the m.direct_to_device EDU) for local devices. messageID makes a
// repeated delivery a no-op. Messages for users of other servers are
// ignored.
func (s *Service) DeliverToDevice(ctx context.Context, sender, evType, messageID string, messages map[string]map[string]json.RawMessage) error {
	local := toDeviceMessages{}
	for user, byDevice := range messages {
		if validUserID(user) && s.isLocal(user) {
			local[user] = byDevice
		}
	}
	if err := checkToDeviceMessages(local); err != nil {
		return err
	}
	return s.sendToDevice(ctx, sender, "", messageID, evType, local)
}

// errDuplicateTxn ends a transaction whose ID was seen before.
var errDuplicateTxn = errors.New("duplicate to-device transaction")

// sendToDevice stores the messages of one request: for local devices (all
// of a user's devices for "*") and, per server, for remote ones, with one
// stream position, unless (sender, senderDevice, txnID) was seen before.
func (s *Service) sendToDevice(ctx context.Context, sender, senderDevice, txnID, evType string, messages toDeviceMessages) error {
	local := toDeviceMessages{}
	remote := map[string]toDeviceMessages{}
	for user, byDevice := range messages {
		if !s.isLocal(user) {
			server := serverOf(user)
			if remote[server] == nil {
				remote[server] = toDeviceMessages{}
			}
			remote[server][user] = byDevice
			continue
		}
		devices, err := s.accounts.ListDevices(ctx, user)
		if err != nil {
			return err
		}
		if resolved := resolveDevices(devices, byDevice); len(resolved) > 0 {
			local[user] = resolved
		}
	}
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		res, err := tx.Exec(ctx, `INSERT INTO e2ee_to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT DO NOTHING`, sender, senderDevice, txnID, time.Now().UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errDuplicateTxn
		}
		if len(local) == 0 && len(remote) == 0 {
			return nil
		}
		pos, err := db.NextStreamPos(ctx, tx)
		if err != nil {
			return err
		}
		for user, byDevice := range local {
			for device, content := range byDevice {
				if _, err := tx.Exec(ctx, `INSERT INTO e2ee_to_device (user_id, device_id, stream_pos, sender, type, content)
					VALUES ($1, $2, $3, $4, $5, $6)`, user, device, pos, sender, evType, string(content)); err != nil {
					return err
				}
			}
		}
		for server, msgs := range remote {
			if _, err := tx.Exec(ctx, `INSERT INTO e2ee_to_device_outbox (destination, stream_pos, sender, type, message_id, messages)
				VALUES ($1, $2, $3, $4, $5, $6)`, server, pos, sender, evType, accounts.RandomID(20), string(rawJSON(msgs))); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errDuplicateTxn) {
		return nil
	}
	if err != nil {
		return err
	}
	for user := range local {
		s.notifier.Wake(user)
	}
	if s.Remote.ToDeviceQueued != nil {
		for server := range remote {
			s.Remote.ToDeviceQueued(server)
		}
	}
	return nil
}

// resolveDevices maps a user's messages onto their existing devices: "*"
// reaches every device, a device ID only that device (and wins over "*");
// unknown devices get nothing.
func resolveDevices(devices []accounts.Device, byDevice map[string]json.RawMessage) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	all, hasAll := byDevice["*"]
	for _, d := range devices {
		if c, ok := byDevice[d.DeviceID]; ok {
			out[d.DeviceID] = c
		} else if hasAll {
			out[d.DeviceID] = all
		}
	}
	return out
}

// toDeviceEvent is a to-device message as /sync shows it.
type toDeviceEvent struct {
	Content json.RawMessage `json:"content"`
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
}

// scanToDevice reads rows of (stream_pos, sender, type, content) into
// events and returns the last position (0 if none).
func scanToDevice(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
}) ([]json.RawMessage, int64, error) {
	var out []json.RawMessage
	var last int64
	for rows.Next() {
		var ev toDeviceEvent
		var content string
		if err := rows.Scan(&last, &ev.Sender, &ev.Type, &content); err != nil {
			return nil, 0, err
		}
		ev.Content = json.RawMessage(content)
		out = append(out, rawJSON(ev))
	}
	return out, last, rows.Err()
}

// syncToDevice acknowledges the messages the request's since token proves
// delivered and returns the next ones for the device, marking them
// delivered at the response's position.
func (s *Service) syncToDevice(ctx context.Context, rq *sync.Request) ([]json.RawMessage, error) {
	since := int64(-1) // an initial sync acknowledges nothing
	if !rq.Initial {
		since = rq.Since.Pos
	}
	acked := false
	if since >= 0 {
		err := s.db.QueryRow(ctx, `SELECT 1 FROM e2ee_to_device WHERE user_id = $1 AND device_id = $2 AND delivered_pos <= $3 LIMIT 1`,
			rq.UserID, rq.DeviceID, since).Scan(new(int))
		if err != nil && !errors.Is(err, db.ErrNoRows) {
			return nil, err
		}
		acked = err == nil
	}
	rows, err := s.db.Query(ctx, `SELECT stream_pos, sender, type, content FROM e2ee_to_device
		WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3 AND (delivered_pos IS NULL OR delivered_pos > $4)
		ORDER BY stream_pos LIMIT $5`, rq.UserID, rq.DeviceID, rq.To, since, toDeviceLimit)
	if err != nil {
		return nil, err
	}
	evs, last, err := scanToDevice(rows)
	rows.Close()
	if err != nil {
		return nil, err
	}
	if !acked && len(evs) == 0 {
		return nil, nil
	}
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if acked {
			if _, err := tx.Exec(ctx, `DELETE FROM e2ee_to_device WHERE user_id = $1 AND device_id = $2 AND delivered_pos <= $3`,
				rq.UserID, rq.DeviceID, since); err != nil {
				return err
			}
		}
		if len(evs) > 0 {
			_, err := tx.Exec(ctx, `UPDATE e2ee_to_device SET delivered_pos = $3 WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $4
				AND (delivered_pos IS NULL OR delivered_pos > $5)`, rq.UserID, rq.DeviceID, rq.To, last, since)
			return err
		}
		return nil
	})
	return evs, err
}

// OutboundToDevice is one request's to-device messages for the users of one
// remote server, waiting in the outbox.
type OutboundToDevice struct {
	Pos       int64
	Sender    string
	Type      string
	MessageID string
	Messages  map[string]map[string]json.RawMessage
}

// PendingRemoteToDevice returns up to limit batches of to-device messages
// waiting for server, oldest first. The federation sender sends them and
// then calls AckRemoteToDevice.
func (s *Service) PendingRemoteToDevice(ctx context.Context, server string, limit int) ([]OutboundToDevice, error) {
	rows, err := s.db.Query(ctx, `SELECT stream_pos, sender, type, message_id, messages FROM e2ee_to_device_outbox
		WHERE destination = $1 ORDER BY stream_pos LIMIT $2`, server, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OutboundToDevice
	for rows.Next() {
		var o OutboundToDevice
		var msgs string
		if err := rows.Scan(&o.Pos, &o.Sender, &o.Type, &o.MessageID, &msgs); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(msgs), &o.Messages); err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// AckRemoteToDevice deletes the batches for server up to position upTo,
// once the server accepted them.
func (s *Service) AckRemoteToDevice(ctx context.Context, server string, upTo int64) error {
	_, err := s.db.Exec(ctx, `DELETE FROM e2ee_to_device_outbox WHERE destination = $1 AND stream_pos <= $2`, server, upTo)
	return err
}
