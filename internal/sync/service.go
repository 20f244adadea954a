package sync

import (
	"context"
	"sort"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Extension adds a section to sync responses (to-device messages, device
// lists, one-time key counts: the end-to-end encryption domain plugs in
// here). It is called once per response with the request's range.
type Extension func(ctx context.Context, rq *Request, resp *Response) error

// Service is the sync domain.
type Service struct {
	db              *db.DB
	rooms           *rooms.Engine
	accounts        *accounts.Service
	notifier        *Notifier
	typing          *Typing
	presence        presenceTracker
	presenceEnabled bool
	extensions      []Extension
	stop            context.CancelFunc

	// ReceiptStored, when set, runs inside the transaction that stores a
	// read receipt (the push domain lowers notification counts with it);
	// the function it returns, if any, runs after the commit.
	ReceiptStored func(ctx context.Context, tx *db.Tx, rc Receipt) (after func(), err error)
	// UnreadCounts, when set, returns a user's unread notification counts
	// by room and thread ("main" for the main timeline) as of stream
	// position upTo, for the joined rooms of a response.
	UnreadCounts func(ctx context.Context, userID string, upTo int64) (map[string]map[string]UnreadCounts, error)
}

// New returns the sync service. Call Start to run its timers and Stop at
// shutdown.
func New(d *db.DB, r *rooms.Engine, a *accounts.Service, presenceEnabled bool) *Service {
	s := &Service{db: d, rooms: r, accounts: a, notifier: NewNotifier(), presenceEnabled: presenceEnabled,
		presence: presenceTracker{lastSync: map[string]time.Time{}}}
	s.typing = NewTyping(func(roomID string) { s.wakeRoom(context.Background(), roomID) })
	return s
}

// Notifier is the service's notifier, for other domains to wake users.
func (s *Service) Notifier() *Notifier { return s.notifier }

// AddExtension registers a sync extension.
func (s *Service) AddExtension(x Extension) { s.extensions = append(s.extensions, x) }

// Start runs the typing and presence timers until Stop.
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go s.typing.run(ctx)
	if s.presenceEnabled {
		go func() {
			tick := time.NewTicker(5 * time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-tick.C:
					s.expirePresence(ctx, now)
				}
			}
		}()
	}
}

// Stop ends the timers.
func (s *Service) Stop() {
	if s.stop != nil {
		s.stop()
	}
}

// Routes registers the sync, typing, receipt and presence endpoints.
func (s *Service) Routes(rt *httpx.Router) {
	rt.AuthedGuestOK("GET /_matrix/client/v3/sync", s.handleSync)
	rt.AuthedGuestOK("PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}", s.handleTyping)
	rt.AuthedGuestOK("POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}", s.handleReceipt)
	rt.AuthedGuestOK("POST /_matrix/client/v3/rooms/{roomId}/read_markers", s.handleReadMarkers)
	rt.AuthedGuestOK("GET /_matrix/client/v3/presence/{userId}/status", s.handleGetPresence)
	rt.AuthedGuestOK("PUT /_matrix/client/v3/presence/{userId}/status", s.handlePutPresence)
}

// OnNewEvents wakes the users new room events concern: the room's joined
// members and the targets of membership events. The room engine calls it
// after each commit.
func (s *Service) OnNewEvents(evs []*rooms.Event) {
	ctx := context.Background()
	seen := map[string]bool{}
	for _, ev := range evs {
		roomID := ev.RoomID().String()
		if !seen[roomID] {
			seen[roomID] = true
			s.wakeRoom(ctx, roomID)
		}
		if ev.Type() == spec.MRoomMember && ev.StateKey() != nil {
			s.notifier.Wake(*ev.StateKey())
		}
	}
}

// OnAccountData wakes a user whose account data changed.
func (s *Service) OnAccountData(userID string) { s.notifier.Wake(userID) }

// wakeRoom wakes the joined members of a room.
func (s *Service) wakeRoom(ctx context.Context, roomID string) {
	members, err := s.rooms.JoinedMembers(ctx, roomID)
	if err == nil {
		s.notifier.Wake(members...)
	}
}

// sharedUsers lists the users who share a joined room with userID,
// including userID.
func (s *Service) sharedUsers(ctx context.Context, userID string) ([]string, error) {
	joined, err := s.rooms.JoinedRooms(ctx, userID)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{userID: true}
	for _, r := range joined {
		members, err := s.rooms.JoinedMembers(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, m := range members {
			set[m] = true
		}
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	sort.Strings(out)
	return out, nil
}
