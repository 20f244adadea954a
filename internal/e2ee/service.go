// Package e2ee carries what end-to-end encryption needs from a homeserver:
// device keys, one-time and fallback keys, cross-signing keys and their
// signatures, server-side key backups, dehydrated devices, to-device
// messages and device-list tracking. The server never sees a private key or
// a plaintext; it stores, checks and hands out public material.
//
// Everything a client syncs from here takes a position of the global stream
// (db.NextStreamPos) in the transaction that stores it: to-device messages,
// device-list changes, and the joins and departures that make users start
// or stop sharing a room. /sync reads them through a sync.Extension.
//
// Other servers are reached through Remote, which the federation domain
// fills in; until it does, remote users are reported in "failures" and
// to-device messages for them wait in a durable outbox.
package e2ee

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
	"github.com/palpo-go/palpo/internal/sync"
)

// Remote is how the E2EE domain reaches other homeservers. The federation
// domain fills it in; every field may be nil, which means that remote
// servers cannot be reached for that purpose (queries and claims report the
// server in "failures"; to-device messages wait in the outbox).
type Remote struct {
	// QueryKeys asks server for the device and cross-signing keys of its
	// users (federation /user/keys/query).
	QueryKeys func(ctx context.Context, server string, q KeysQuery) (*KeysQueryResult, error)
	// ClaimKeys claims one-time keys of server's devices (federation
	// /user/keys/claim).
	ClaimKeys func(ctx context.Context, server string, q KeysClaim) (ClaimedKeys, error)
	// ToDeviceQueued is called after to-device messages for server were
	// committed to the outbox (read them with PendingRemoteToDevice).
	ToDeviceQueued func(server string)
	// DeviceListChanged is called after a local user's devices or
	// cross-signing keys changed at stream position pos (the m.device_list_update
	// and m.signing_key_update EDUs go out from here). deviceID is "" for a
	// cross-signing key change.
	DeviceListChanged func(userID, deviceID string, pos int64)
}

// Service is the E2EE domain.
type Service struct {
	db         *db.DB
	serverName string
	accounts   *accounts.Service
	rooms      *rooms.Engine
	notifier   *sync.Notifier

	// Remote reaches other servers; see Remote.
	Remote Remote
}

// New returns the E2EE service. notifier wakes the /sync long-polls of the
// users a change concerns.
func New(d *db.DB, a *accounts.Service, r *rooms.Engine, notifier *sync.Notifier) *Service {
	return &Service{db: d, serverName: a.ServerName(), accounts: a, rooms: r, notifier: notifier}
}

// Routes registers the E2EE endpoints.
func (s *Service) Routes(rt *httpx.Router) {
	const v3 = "/_matrix/client/v3"
	rt.AuthedGuestOK("POST "+v3+"/keys/upload", s.handleUpload)
	rt.AuthedGuestOK("POST "+v3+"/keys/query", s.handleQuery)
	rt.AuthedGuestOK("POST "+v3+"/keys/claim", s.handleClaim)
	rt.AuthedGuestOK("GET "+v3+"/keys/changes", s.handleChanges)
	rt.Authed("POST "+v3+"/keys/device_signing/upload", s.handleDeviceSigningUpload)
	rt.Authed("POST "+v3+"/keys/signatures/upload", s.handleSignaturesUpload)
	rt.AuthedGuestOK("PUT "+v3+"/sendToDevice/{eventType}/{txnId}", s.handleSendToDevice)
	s.backupRoutes(rt)
	s.dehydratedRoutes(rt)
}

// Extension is the sync extension of the domain: to-device messages,
// device-list changes, one-time key counts and unused fallback key types.
func (s *Service) Extension() sync.Extension { return s.syncExtension }

// OnDeviceDeleted removes what a deleted device leaves behind: its keys, its
// pending to-device messages and transaction IDs, the signatures on its key
// and, for a dehydrated device, the dehydrated device record. The change is
// a device-list change for the user's peers. accounts calls it (as its
// DeviceDeleted hook) after the device and its tokens are gone.
func (s *Service) OnDeviceDeleted(ctx context.Context, userID, deviceID string) {
	ctx = context.WithoutCancel(ctx)
	var pos int64
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		for _, q := range []string{
			`DELETE FROM e2ee_device_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM e2ee_one_time_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM e2ee_fallback_keys WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM e2ee_to_device WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM e2ee_to_device_txns WHERE user_id = $1 AND device_id = $2`,
			`DELETE FROM e2ee_key_signatures WHERE user_id = $1 AND key_id = $2`,
			`DELETE FROM e2ee_dehydrated_devices WHERE user_id = $1 AND device_id = $2`,
		} {
			if _, err := tx.Exec(ctx, q, userID, deviceID); err != nil {
				return err
			}
		}
		var err error
		pos, err = recordDeviceListChange(ctx, tx, userID, deviceID)
		return err
	})
	if err != nil {
		slog.Error("e2ee: cleaning up a deleted device", "user", userID, "device", deviceID, "err", err)
		return
	}
	s.afterDeviceListChange(ctx, userID, deviceID, pos)
}

// isLocal reports whether userID belongs to this server. userID must be a
// valid user ID.
func (s *Service) isLocal(userID string) bool { return serverOf(userID) == s.serverName }

// errorObject is a Matrix error as an object inside a response (failures).
func errorObject(err *httpx.Error) map[string]any {
	return map[string]any{"errcode": err.ErrCode, "error": err.Message}
}

// unreachable is the failure reported for a server that cannot be reached.
func unreachable(server string, err error) map[string]any {
	msg := "Federation with " + server + " is not available"
	if err != nil {
		msg = err.Error()
	}
	return map[string]any{"status": http.StatusServiceUnavailable, "message": msg}
}

// rawJSON marshals v for a response that embeds stored JSON.
func rawJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage("null")
	}
	return b
}
