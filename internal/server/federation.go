package server

import (
	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/rooms"
)

// wireFederation builds the room-level federation (transactions, history,
// queries, the sender) on the transport and connects it to the other
// domains: it follows committed events (after the hooks already set), and
// serves the room engine's backfill, remote directory and alias hooks and
// the accounts domain's remote profile lookups. The transport's routes
// must be registered first.
func (s *Server) wireFederation() {
	s.RoomFederation = federation.NewService(s.Federation, s.DB, s.Rooms, s.Sync, s.Accounts)
	s.RoomFederation.Routes(s.router)
	newEvents := s.Rooms.NewEvents
	s.Rooms.NewEvents = func(evs []*rooms.Event) {
		if newEvents != nil {
			newEvents(evs)
		}
		s.RoomFederation.OnNewEvents(evs)
	}
	s.Rooms.Federation = s.RoomFederation.RoomHooks()
	s.Accounts.Hooks.RemoteProfile = s.RoomFederation.RemoteProfile
}
