package server

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/palpo-go/palpo/internal/federation"
)

// To-device messages over federation: the E2EE domain's outbox goes out as
// m.direct_to_device EDUs through an EDU source of the federation sender,
// and m.direct_to_device EDUs that arrive are delivered to local devices.

// directToDevice is the content of m.direct_to_device.
type directToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// wireToDeviceFederation connects the E2EE domain's to-device outbox and
// delivery to the federation sender and the m.direct_to_device hook.
func (s *Server) wireToDeviceFederation() {
	sender := s.RoomFederation.Sender
	sender.AddEDUSource(federation.EDUSource{Pending: s.pendingToDeviceEDUs, Destinations: s.E2EE.RemoteToDeviceDestinations})
	s.E2EE.Remote.ToDeviceQueued = sender.Wake
	s.RoomFederation.EDUHooks.DirectToDevice = s.receiveDirectToDevice
}

// pendingToDeviceEDUs is the EDU source's Pending: the outbox batches for
// dest as m.direct_to_device EDUs, acknowledged up to the last one sent.
func (s *Server) pendingToDeviceEDUs(ctx context.Context, dest string, limit int) ([]json.RawMessage, func(context.Context) error, error) {
	batches, err := s.E2EE.PendingRemoteToDevice(ctx, dest, limit)
	if err != nil || len(batches) == 0 {
		return nil, nil, err
	}
	edus := make([]json.RawMessage, 0, len(batches))
	for _, b := range batches {
		raw, err := json.Marshal(map[string]any{"edu_type": "m.direct_to_device", "content": directToDevice{
			Sender: b.Sender, Type: b.Type, MessageID: b.MessageID, Messages: b.Messages}})
		if err != nil {
			return nil, nil, err
		}
		edus = append(edus, raw)
	}
	upTo := batches[len(batches)-1].Pos
	return edus, func(ctx context.Context) error { return s.E2EE.AckRemoteToDevice(ctx, dest, upTo) }, nil
}

// receiveDirectToDevice delivers an m.direct_to_device EDU from origin to
// local devices; EDUs whose sender is not a user of origin, or that are
// malformed, are dropped.
func (s *Server) receiveDirectToDevice(ctx context.Context, origin string, content json.RawMessage) {
	var c directToDevice
	if json.Unmarshal(content, &c) != nil || !ofServer(c.Sender, origin) || c.Type == "" || c.MessageID == "" {
		return
	}
	if err := s.E2EE.DeliverToDevice(ctx, c.Sender, c.Type, c.MessageID, c.Messages); err != nil {
		slog.Warn("federation: dropping an m.direct_to_device EDU", "origin", origin, "sender", c.Sender, "err", err)
	}
}
