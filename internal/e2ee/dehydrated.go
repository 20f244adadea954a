package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Dehydrated devices (MSC3814, under its unstable prefix until the spec
// has them): a user keeps one device on the server, without an access
// token, that other users' clients encrypt room keys to; a later login
// reads the to-device messages it received. The device is a normal device
// of the user (devices table, keys, to-device queue); this file adds its
// encrypted pickle and the endpoints.

const dehydratedPrefix = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

func (s *Service) dehydratedRoutes(rt *httpx.Router) {
	rt.Authed("PUT "+dehydratedPrefix, s.handlePutDehydrated)
	rt.Authed("GET "+dehydratedPrefix, s.handleGetDehydrated)
	rt.Authed("DELETE "+dehydratedPrefix, s.handleDeleteDehydrated)
	rt.Authed("POST "+dehydratedPrefix+"/{deviceId}/events", s.handleDehydratedEvents)
}

var errNoDehydrated = httpx.NotFound("No dehydrated device")

// dehydratedDevice returns the user's dehydrated device ID and data ("" if
// none).
func (s *Service) dehydratedDevice(ctx context.Context, userID string) (deviceID, data string, err error) {
	err = s.db.QueryRow(ctx, `SELECT device_id, device_data FROM e2ee_dehydrated_devices WHERE user_id = $1`, userID).Scan(&deviceID, &data)
	if errors.Is(err, db.ErrNoRows) {
		return "", "", nil
	}
	return deviceID, data, err
}

// handlePutDehydrated replaces the user's dehydrated device with a new one,
// uploaded with its keys in the same request.
func (s *Service) handlePutDehydrated(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		keysUpload
		DeviceID    *string         `json:"device_id"`
		DeviceData  json.RawMessage `json:"device_data"`
		DisplayName *string         `json:"initial_device_display_name"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	if req.DeviceID == nil || !present(req.DeviceData) || !present(req.DeviceKeys) {
		return nil, httpx.MissingParam("device_id, device_data and device_keys are required")
	}
	deviceID := *req.DeviceID
	if !validText(deviceID) {
		return nil, httpx.InvalidParam("Invalid device_id")
	}
	if req.DeviceData[0] != '{' {
		return nil, httpx.BadJSON("device_data must be an object")
	}
	name := "Dehydrated device"
	if req.DisplayName != nil {
		name = *req.DisplayName
	}
	up, err := parseUpload(&req.keysUpload, p.UserID, deviceID)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	old, _, err := s.dehydratedDevice(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	devices, err := s.accounts.ListDevices(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	for _, d := range devices {
		if d.DeviceID == deviceID && deviceID != old {
			return nil, httpx.InvalidParam("The user already has a device %s", deviceID)
		}
	}
	if old != "" {
		// Deleting the device runs OnDeviceDeleted, which drops its keys,
		// messages and dehydrated record.
		if err := s.accounts.DeleteDevices(ctx, p.UserID, []string{old}, ""); err != nil {
			return nil, err
		}
	}
	created, err := s.accounts.CreateTokenlessDevice(ctx, p.UserID, deviceID, name)
	if err != nil {
		return nil, err
	}
	if !created {
		return nil, httpx.InvalidParam("The user already has a device %s", deviceID)
	}
	var pos int64
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO e2ee_dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)
			ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data`,
			p.UserID, deviceID, string(req.DeviceData)); err != nil {
			return err
		}
		var err error
		pos, err = storeUpload(ctx, tx, p.UserID, deviceID, up)
		return err
	})
	if err != nil {
		return nil, err
	}
	if pos != 0 {
		s.afterDeviceListChange(ctx, p.UserID, deviceID, pos)
	}
	return map[string]string{"device_id": deviceID}, nil
}

func (s *Service) handleGetDehydrated(r *http.Request, p *httpx.Principal) (any, error) {
	deviceID, data, err := s.dehydratedDevice(r.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	if deviceID == "" {
		return nil, errNoDehydrated
	}
	return map[string]any{"device_id": deviceID, "device_data": json.RawMessage(data)}, nil
}

func (s *Service) handleDeleteDehydrated(r *http.Request, p *httpx.Principal) (any, error) {
	ctx := r.Context()
	deviceID, _, err := s.dehydratedDevice(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	if deviceID == "" {
		return nil, errNoDehydrated
	}
	if err := s.accounts.DeleteDevices(ctx, p.UserID, []string{deviceID}, ""); err != nil {
		return nil, err
	}
	return map[string]string{"device_id": deviceID}, nil
}

// handleDehydratedEvents pages through the to-device messages of the
// dehydrated device. Unlike /sync it deletes nothing: an interrupted
// rehydration can start over (the messages go with the device).
func (s *Service) handleDehydratedEvents(r *http.Request, p *httpx.Principal) (any, error) {
	var req struct {
		NextBatch *string `json:"next_batch"`
	}
	if err := httpx.DecodeOptionalJSON(r, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	deviceID, _, err := s.dehydratedDevice(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	if deviceID == "" || deviceID != r.PathValue("deviceId") {
		return nil, httpx.Forbidden("Not the user's dehydrated device")
	}
	var after int64
	if req.NextBatch != nil && *req.NextBatch != "" {
		if after, err = strconv.ParseInt(*req.NextBatch, 10, 64); err != nil || after < 0 {
			return nil, httpx.InvalidParam("Invalid next_batch")
		}
	}
	rows, err := s.db.Query(ctx, `SELECT stream_pos, sender, type, content FROM e2ee_to_device
		WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 ORDER BY stream_pos LIMIT $4`, p.UserID, deviceID, after, toDeviceLimit)
	if err != nil {
		return nil, err
	}
	evs, last, err := scanToDevice(rows)
	rows.Close()
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		last = after
		evs = []json.RawMessage{}
	}
	return map[string]any{"events": evs, "next_batch": strconv.FormatInt(last, 10)}, nil
}
