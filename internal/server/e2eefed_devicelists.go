package server

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/palpo-go/palpo/internal/e2ee"
)

// Device lists over federation: a local user's device or cross-signing key
// change goes out as m.device_list_update or m.signing_key_update to the
// servers sharing a room with them, and those EDUs from other servers mark
// the remote user changed for the local users sharing a room with them.

// deviceListUpdate is the content of m.device_list_update.
type deviceListUpdate struct {
	UserID   string          `json:"user_id"`
	DeviceID string          `json:"device_id"`
	StreamID int64           `json:"stream_id"`
	PrevID   []int64         `json:"prev_id"`
	Deleted  bool            `json:"deleted,omitempty"`
	Keys     json.RawMessage `json:"keys,omitempty"`
}

// signingKeyUpdate is the content of m.signing_key_update.
type signingKeyUpdate struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// wireDeviceListFederation connects the E2EE domain's device-list changes
// to the federation sender and the incoming EDU hooks.
func (s *Server) wireDeviceListFederation() {
	s.E2EE.Remote.DeviceListChanged = s.sendDeviceListChange
	s.RoomFederation.EDUHooks.DeviceListUpdate = s.receiveDeviceListUpdate
	s.RoomFederation.EDUHooks.SigningKeyUpdate = s.receiveSigningKeyUpdate
}

// sendDeviceListChange queues the EDU of a local user's device-list change
// at pos for the servers sharing a room with the user.
func (s *Server) sendDeviceListChange(userID, deviceID string, pos int64) {
	ctx := context.Background()
	if err := s.queueDeviceListChange(ctx, userID, deviceID, pos); err != nil {
		slog.Error("federation: sending a device-list change", "user", userID, "device", deviceID, "err", err)
	}
}

func (s *Server) queueDeviceListChange(ctx context.Context, userID, deviceID string, pos int64) error {
	servers, err := s.sharingServers(ctx, userID)
	if err != nil || len(servers) == 0 {
		return err
	}
	keys, err := s.E2EE.QueryLocalKeys(ctx, "", e2ee.KeysQuery{userID: nilIfEmpty(deviceID)})
	if err != nil {
		return err
	}
	if deviceID == "" {
		return s.RoomFederation.Sender.QueueEDU(ctx, servers, "m.signing_key_update", signingKeyUpdate{
			UserID: userID, MasterKey: keys.MasterKeys[userID], SelfSigningKey: keys.SelfSigningKeys[userID]})
	}
	key, ok := keys.DeviceKeys[userID][deviceID]
	return s.RoomFederation.Sender.QueueEDU(ctx, servers, "m.device_list_update", deviceListUpdate{
		UserID: userID, DeviceID: deviceID, StreamID: pos, PrevID: []int64{}, Deleted: !ok, Keys: key})
}

// nilIfEmpty is the device list of a KeysQuery for deviceID ("": none).
func nilIfEmpty(deviceID string) []string {
	if deviceID == "" {
		return nil
	}
	return []string{deviceID}
}

// sharingServers lists the other servers with members joined to a room
// userID is joined to.
func (s *Server) sharingServers(ctx context.Context, userID string) ([]string, error) {
	joined, err := s.Rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	var out []string
	for _, roomID := range joined {
		servers, err := s.RoomFederation.Sender.RoomServers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		for _, srv := range servers {
			if !set[srv] {
				set[srv] = true
				out = append(out, srv)
			}
		}
	}
	return out, nil
}

func (s *Server) receiveDeviceListUpdate(ctx context.Context, origin string, content json.RawMessage) {
	var c deviceListUpdate
	if json.Unmarshal(content, &c) != nil || c.DeviceID == "" {
		return
	}
	s.remoteDeviceListChanged(ctx, origin, c.UserID, c.DeviceID)
}

func (s *Server) receiveSigningKeyUpdate(ctx context.Context, origin string, content json.RawMessage) {
	var c signingKeyUpdate
	if json.Unmarshal(content, &c) != nil {
		return
	}
	s.remoteDeviceListChanged(ctx, origin, c.UserID, "")
}

// remoteDeviceListChanged records the change of a user of origin.
func (s *Server) remoteDeviceListChanged(ctx context.Context, origin, userID, deviceID string) {
	if !ofServer(userID, origin) {
		return
	}
	if err := s.E2EE.RemoteDeviceListChanged(ctx, userID, deviceID); err != nil {
		slog.Error("federation: recording a remote device-list change", "origin", origin, "user", userID, "err", err)
	}
}
