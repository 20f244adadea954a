package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	gosync "sync"
	"time"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/sync"
)

// The room-level federation, built on the transport (Federation):
//
//	PUT  /v1/send/{txnId}                       send_in.go (EDUs: edus.go)
//	GET  /v1/event/{eventId}                    history.go
//	GET  /v1/state/{roomId}, /v1/state_ids/…    history.go
//	GET  /v1/event_auth/{roomId}/{eventId}      history.go
//	GET  /v1/backfill/{roomId}                  history.go (outbound: backfill.go)
//	POST /v1/get_missing_events/{roomId}        history.go (outbound: missing.go)
//	GET  /v1/timestamp_to_event/{roomId}        history.go
//	GET  /v1/query/directory, /v1/query/profile queries.go
//	GET/POST /v1/publicRooms                    queries.go
//	GET  /v1/openid/userinfo                    openid.go
//
// and the sender (sender.go, queue.go, stream.go), which sends local events
// and EDUs to the other servers of each room from durable positions.

// Service is the room-level federation: it receives transactions, answers
// other servers' questions about rooms, fetches the history this server
// lacks, and sends local room activity to the other servers of each room
// through its Sender.
type Service struct {
	fed        *Federation
	db         *db.DB
	rooms      *rooms.Engine
	sync       *sync.Service
	accounts   *accounts.Service
	serverName string

	// Sender sends PDUs and EDUs to other servers.
	Sender *Sender
	// EDUHooks receive the EDUs other domains handle; nil hooks drop them.
	EDUHooks EDUHooks

	txnLocks       gosync.Map // origin → *gosync.Mutex: one transaction per origin at a time
	backfills      gosync.Map // room ID → *gosync.Mutex: one backfill per room at a time
	backfillMisses gosync.Map // room ID → backfillMiss
	stopPruner     context.CancelFunc
}

// EDUHooks receive the EDUs that the end-to-end encryption domain handles.
// Each gets the authenticated origin server and the EDU's content; a nil
// hook drops the EDU.
type EDUHooks struct {
	// DeviceListUpdate receives m.device_list_update.
	DeviceListUpdate func(ctx context.Context, origin string, content json.RawMessage)
	// DirectToDevice receives m.direct_to_device.
	DirectToDevice func(ctx context.Context, origin string, content json.RawMessage)
	// SigningKeyUpdate receives m.signing_key_update.
	SigningKeyUpdate func(ctx context.Context, origin string, content json.RawMessage)
}

// NewService builds the room-level federation on the transport fed.
func NewService(fed *Federation, d *db.DB, r *rooms.Engine, s *sync.Service, a *accounts.Service) *Service {
	svc := &Service{fed: fed, db: d, rooms: r, sync: s, accounts: a, serverName: fed.ServerName()}
	svc.Sender = newSender(svc)
	s.OnLocalTyping(svc.isLocalUser, svc.Sender.localTyping)
	return svc
}

// RoomHooks are the hooks the room engine calls to reach other servers.
func (s *Service) RoomHooks() rooms.FederationHooks {
	return rooms.FederationHooks{Backfill: s.Backfill, PublicRooms: s.RemotePublicRooms, ResolveAlias: s.ResolveRemoteAlias}
}

// OnNewEvents is chained to the room engine's NewEvents hook: new local
// events wake the sender, which reads them from the stream.
func (s *Service) OnNewEvents(evs []*rooms.Event) { s.Sender.wakeStream() }

// Routes registers the room-level federation endpoints (after the
// transport's Routes) and the client endpoint that issues OpenID tokens.
func (s *Service) Routes(rt *httpx.Router) {
	const v1 = "/_matrix/federation/v1"
	s.fed.HandleWithBodyLimit("PUT "+v1+"/send/{txnId}", maxTxnBody, s.peer(s.handleSend))
	s.handle("GET "+v1+"/event/{eventId}", s.handleEvent)
	s.handle("GET "+v1+"/state/{roomId}", s.handleState)
	s.handle("GET "+v1+"/state_ids/{roomId}", s.handleStateIDs)
	s.handle("GET "+v1+"/event_auth/{roomId}/{eventId}", s.handleEventAuth)
	s.handle("GET "+v1+"/backfill/{roomId}", s.handleBackfill)
	s.handle("POST "+v1+"/get_missing_events/{roomId}", s.handleGetMissingEvents)
	s.handle("GET "+v1+"/timestamp_to_event/{roomId}", s.handleTimestampToEvent)
	s.handle("GET "+v1+"/query/directory", s.handleQueryDirectory)
	s.handle("GET "+v1+"/query/profile", s.handleQueryProfile)
	s.handle("GET "+v1+"/publicRooms", s.handleGetPublicRooms)
	s.handle("POST "+v1+"/publicRooms", s.handlePostPublicRooms)
	rt.Public("GET "+v1+"/openid/userinfo", s.handleOpenIDUserInfo)
	rt.Authed("POST /_matrix/client/v3/user/{userId}/openid/request_token", s.handleRequestOpenIDToken)
}

// handle registers an authenticated endpoint of the service.
func (s *Service) handle(pattern string, h Handler) { s.fed.Handle(pattern, s.peer(h)) }

// peer wraps a handler: a request from a server shows that it is up, so
// the sender stops backing off from it.
func (s *Service) peer(h Handler) Handler {
	return func(r *http.Request, origin string) (any, error) {
		s.Sender.PeerAlive(origin)
		return h(r, origin)
	}
}

// Start runs the sender and the pruning of old inbound transaction IDs.
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopPruner = cancel
	s.Sender.start()
	go s.pruneTxns(ctx)
}

// Stop stops the sender; work in flight is retried after a restart.
func (s *Service) Stop() {
	if s.stopPruner != nil {
		s.stopPruner()
	}
	s.Sender.stop()
}

// isLocalUser reports whether userID belongs to this server.
func (s *Service) isLocalUser(userID string) bool { return serverOfUser(userID) == s.serverName }

// serverOfUser returns the server name of a user ID ("" if malformed).
func serverOfUser(userID string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, server, _ := strings.Cut(userID, ":")
	return server
}

// roomServers returns the servers with joined members in a room (this one
// included when it has any).
func (s *Service) roomServers(ctx context.Context, roomID string) (map[string]bool, error) {
	members, err := s.rooms.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, m := range members {
		if srv := serverOfUser(m); srv != "" {
			out[srv] = true
		}
	}
	return out, nil
}

// txnRetention is how long received transaction IDs are remembered.
const txnRetention = 24 * time.Hour

// pruneTxns forgets old inbound transaction IDs, hourly.
func (s *Service) pruneTxns(ctx context.Context) {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		_, _ = s.db.Exec(ctx, `DELETE FROM federation_inbound_txns WHERE received_ts < $1`, time.Now().Add(-txnRetention).UnixMilli())
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// HandleWithBodyLimit is Handle with its own request body limit (a
// transaction is larger than a client request).
func (f *Federation) HandleWithBodyLimit(pattern string, limit int64, h Handler) {
	if f.router == nil {
		panic("federation: HandleWithBodyLimit called before Routes")
	}
	f.router.Signed(pattern, limit, f.authenticated(h))
}
