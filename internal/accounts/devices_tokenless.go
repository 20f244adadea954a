package accounts

import (
	"context"
	"time"
)

// CreateTokenlessDevice registers a device that no access token belongs to:
// a dehydrated device (MSC3814), which other users' clients encrypt to and
// which a later login of its owner reads. It reports false, creating
// nothing, if the user already has a device with that ID.
func (s *Service) CreateTokenlessDevice(ctx context.Context, userID, deviceID, displayName string) (bool, error) {
	if err := checkDeviceText(deviceID, displayName); err != nil {
		return false, err
	}
	var dn any
	if displayName != "" {
		dn = displayName
	}
	res, err := s.db.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id) DO NOTHING`, userID, deviceID, dn, time.Now().UnixMilli())
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}
