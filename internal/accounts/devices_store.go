package accounts

import (
	"context"
	"errors"
	"fmt"

	"github.com/palpo-go/palpo/internal/db"
)

// Device is a device row.
type Device struct {
	UserID        string
	DeviceID      string
	DisplayName   *string
	CreatedTS     int64
	LastSeenTS    *int64
	LastSeenIP    *string
	LastSeenAgent *string
}

// upsertDevice creates a device or refreshes an existing one's last-seen
// data (and its display name when one is given).
func (s *Service) upsertDevice(ctx context.Context, tx *db.Tx, userID, deviceID, displayName, ip, agent string, now int64) error {
	var dn any
	if displayName != "" {
		dn = displayName
	}
	_, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip, last_seen_agent)
		VALUES ($1, $2, $3, $4, $4, $5, $6)
		ON CONFLICT (user_id, device_id) DO UPDATE SET
			display_name = COALESCE(excluded.display_name, devices.display_name),
			last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip, last_seen_agent = excluded.last_seen_agent`,
		userID, deviceID, dn, now, ip, agent)
	return err
}

// ListDevices returns a user's devices ordered by device ID.
func (s *Service) ListDevices(ctx context.Context, userID string) ([]Device, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip, last_seen_agent
		FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		var d Device
		if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.CreatedTS, &d.LastSeenTS, &d.LastSeenIP, &d.LastSeenAgent); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// GetDevice returns one device, or nil if the user has no such device.
func (s *Service) GetDevice(ctx context.Context, userID, deviceID string) (*Device, error) {
	var d Device
	err := s.db.QueryRow(ctx, `SELECT user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip, last_seen_agent
		FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID).
		Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.CreatedTS, &d.LastSeenTS, &d.LastSeenIP, &d.LastSeenAgent)
	if errors.Is(err, db.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get device: %w", err)
	}
	return &d, nil
}

// SetDeviceDisplayName renames a device; false if it does not exist.
func (s *Service) SetDeviceDisplayName(ctx context.Context, userID, deviceID, name string) (bool, error) {
	res, err := s.db.Exec(ctx, `UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3`, name, userID, deviceID)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// DeleteDevices deletes the listed devices (nil = all of the user's devices
// except keep) with their tokens, then runs the DeviceDeleted hook for each.
func (s *Service) DeleteDevices(ctx context.Context, userID string, deviceIDs []string, keep string) error {
	var deleted []string
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		var err error
		deleted, err = s.deleteDevicesTx(ctx, tx, userID, deviceIDs, keep)
		return err
	})
	if err != nil {
		return err
	}
	s.afterDevicesDeleted(ctx, userID, deleted)
	return nil
}

// deleteDevicesTx deletes devices and their tokens inside tx and returns the
// IDs of the devices that existed.
func (s *Service) deleteDevicesTx(ctx context.Context, tx *db.Tx, userID string, deviceIDs []string, keep string) ([]string, error) {
	if deviceIDs == nil {
		rows, err := tx.Query(ctx, `SELECT device_id FROM devices WHERE user_id = $1`, userID)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			if id != keep {
				deviceIDs = append(deviceIDs, id)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var deleted []string
	for _, id := range deviceIDs {
		res, err := tx.Exec(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = $2`, userID, id)
		if err != nil {
			return nil, err
		}
		if err := s.deleteDeviceTokens(ctx, tx, userID, id); err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			deleted = append(deleted, id)
		}
	}
	return deleted, nil
}

// afterDevicesDeleted forgets cached tokens and runs the hooks.
func (s *Service) afterDevicesDeleted(ctx context.Context, userID string, deviceIDs []string) {
	for _, id := range deviceIDs {
		s.tokens.forget("", userID, id)
		if s.Hooks.DeviceDeleted != nil {
			s.Hooks.DeviceDeleted(ctx, userID, id)
		}
	}
}
