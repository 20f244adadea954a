package server

import (
	"context"

	"github.com/palpo-go/palpo/internal/push"
	"github.com/palpo-go/palpo/internal/rooms"
)

// wirePush builds the push domain and plugs it into the others. Hooks other
// domains set already are kept: push's run after them.
func (s *Server) wirePush() {
	s.Push = push.New(s.DB, s.Rooms, s.Accounts, s.Config.Push)
	s.Push.Routes(s.router)
	s.Sync.ReceiptStored = s.Push.OnReceipt
	s.Sync.UnreadCounts = s.Push.UnreadCounts
	s.Sync.AddExtension(s.Push.SyncExtension)

	newEvents := s.Rooms.NewEvents
	s.Rooms.NewEvents = func(evs []*rooms.Event) {
		if newEvents != nil {
			newEvents(evs)
		}
		s.Push.OnNewEvents(evs)
	}
	h := &s.Accounts.Hooks
	deviceDeleted := h.DeviceDeleted
	h.DeviceDeleted = func(ctx context.Context, userID, deviceID string) {
		if deviceDeleted != nil {
			deviceDeleted(ctx, userID, deviceID)
		}
		s.Push.DeviceDeleted(ctx, userID, deviceID)
	}
	deactivated := h.Deactivated
	h.Deactivated = func(ctx context.Context, userID string) {
		if deactivated != nil {
			deactivated(ctx, userID)
		}
		s.Push.Deactivated(ctx, userID)
	}
	accountData := h.AccountDataChanged
	h.AccountDataChanged = func(userID string) {
		s.Push.OnAccountData(userID)
		if accountData != nil {
			accountData(userID)
		}
	}
}
