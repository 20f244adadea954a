package e2ee

import (
	"context"

	"github.com/palpo-go/palpo/internal/db"
)

// RemoteDeviceListChanged records that a remote user's device deviceID ("" for
// their cross-signing keys) changed, as an m.device_list_update or
// m.signing_key_update EDU reported, so that the local users sharing a room
// with them see the user in device_lists.changed; it wakes those users.
// Users who share no room with a local user are ignored.
func (s *Service) RemoteDeviceListChanged(ctx context.Context, userID, deviceID string) error {
	if !validUserID(userID) || s.isLocal(userID) {
		return nil
	}
	peers, err := s.peers(ctx, userID)
	if err != nil || len(peers) == 0 {
		return err
	}
	err = s.db.WriteTx(ctx, func(tx *db.Tx) error {
		_, err := recordDeviceListChange(ctx, tx, userID, deviceID)
		return err
	})
	if err != nil {
		return err
	}
	s.notifier.Wake(peers...)
	return nil
}
