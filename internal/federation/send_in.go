package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	gosync "sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/rooms"
)

// Receiving transactions: PUT /_matrix/federation/v1/send/{txnId}.
//
// A transaction's PDUs are grouped by room. Each PDU is checked on its own
// (room known, server ACL, format, signatures, hashes) and the good ones of
// a room are ingested together, fetching what they refer to and this
// server lacks (missing.go). Each PDU gets its own result, so one bad PDU
// never blocks the others. Transactions of one origin are processed one at
// a time, and their answers are kept (federation_inbound_txns) so that a
// retried transaction is answered again instead of processed twice.

// Transaction limits (the spec's).
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	// maxTxnBody bounds a transaction's body: 50 PDUs of at most 64 KiB
	// each, and EDUs.
	maxTxnBody = 16 << 20
)

// transaction is the body of /send.
type transaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []edu             `json:"edus,omitempty"`
}

// edu is an ephemeral data unit.
type edu struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// pduResult is one PDU's entry in the answer to /send.
type pduResult struct {
	Error string `json:"error,omitempty"`
}

// sendResponse is the answer to /send.
type sendResponse struct {
	PDUs map[string]pduResult `json:"pdus"`
}

func (s *Service) handleSend(r *http.Request, origin string) (any, error) {
	txnID := r.PathValue("txnId")
	if txnID == "" || len(txnID) > 255 {
		return nil, httpx.InvalidParam("Invalid transaction ID")
	}
	var txn transaction
	if err := httpx.DecodeJSON(r, &txn); err != nil {
		return nil, err
	}
	if len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
		return nil, httpx.BadJSON("A transaction carries at most %d PDUs and %d EDUs", maxTxnPDUs, maxTxnEDUs)
	}
	ctx := context.WithoutCancel(r.Context()) // finish what was started even if the sender gives up
	v, _ := s.txnLocks.LoadOrStore(origin, &gosync.Mutex{})
	mu := v.(*gosync.Mutex)
	mu.Lock()
	defer mu.Unlock()

	var stored string
	err := s.db.QueryRow(ctx, `SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2`, origin, txnID).Scan(&stored)
	if err == nil {
		return json.RawMessage(stored), nil
	}
	if !errors.Is(err, db.ErrNoRows) {
		return nil, err
	}
	resp := &sendResponse{PDUs: s.receivePDUs(ctx, origin, txn.PDUs)}
	for _, e := range txn.EDUs {
		s.receiveEDU(ctx, origin, e)
	}
	raw, err := json.Marshal(resp)
	if err != nil {
		return nil, err
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (origin, txn_id) DO NOTHING`, origin, txnID, string(raw), time.Now().UnixMilli()); err != nil {
		return nil, err
	}
	return json.RawMessage(raw), nil
}

// receivePDUs checks and ingests a transaction's PDUs and returns each
// one's result by event ID. PDUs whose event ID cannot be known (unknown
// room, unparseable) are dropped without a result.
func (s *Service) receivePDUs(ctx context.Context, origin string, raws []json.RawMessage) map[string]pduResult {
	out := map[string]pduResult{}
	var order []string // rooms in order of first appearance
	byRoom := map[string][]json.RawMessage{}
	for _, raw := range raws {
		roomID := roomOfPDU(raw)
		if _, seen := byRoom[roomID]; !seen {
			order = append(order, roomID)
		}
		byRoom[roomID] = append(byRoom[roomID], raw)
	}
	for _, roomID := range order {
		for id, res := range s.receiveRoomPDUs(ctx, origin, roomID, byRoom[roomID]) {
			out[id] = res
		}
	}
	return out
}

// receiveRoomPDUs handles the PDUs of one room.
func (s *Service) receiveRoomPDUs(ctx context.Context, origin, roomID string, raws []json.RawMessage) map[string]pduResult {
	out := map[string]pduResult{}
	ver, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		if !errors.Is(err, rooms.ErrRoomNotFound) {
			slog.Error("federation: /send: room version", "room", roomID, "err", err)
		}
		slog.Debug("federation: dropping PDUs of an unknown room", "origin", origin, "room", roomID, "count", len(raws))
		s.receiveOutOfBand(ctx, origin, roomID, raws) // withdrawn invites (membership_outofband.go)
		return out
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ver)
	if err != nil {
		return out
	}
	allowed, err := s.rooms.ServerAllowed(ctx, roomID, origin)
	aclFailed := err != nil
	if aclFailed {
		slog.Error("federation: /send: server ACL", "room", roomID, "err", err)
	}
	var pdus []gomatrixserverlib.PDU
	for _, raw := range raws {
		pdu, err := parsePDU(verImpl, raw)
		if err != nil {
			slog.Debug("federation: dropping an invalid PDU", "origin", origin, "room", roomID, "err", err)
			continue
		}
		id := pdu.EventID()
		switch {
		case aclFailed:
			out[id] = pduResult{Error: "Internal error"}
		case !allowed:
			out[id] = pduResult{Error: "The room's server ACL denies " + origin}
		case pdu.RoomID().String() != roomID:
			out[id] = pduResult{Error: "Event of another room"}
		default:
			if err := s.verifyEventSignatures(ctx, verImpl, pdu); err != nil {
				out[id] = pduResult{Error: err.Error()}
				continue
			}
			pdus = append(pdus, pdu)
		}
	}
	if len(pdus) == 0 {
		return out
	}
	results, err := s.ingest(ctx, roomID, origin, pdus, false)
	if err != nil {
		slog.Error("federation: ingesting PDUs", "origin", origin, "room", roomID, "err", err)
		for _, p := range pdus {
			out[p.EventID()] = pduResult{Error: "Internal error"}
		}
		return out
	}
	for _, p := range pdus {
		out[p.EventID()] = resultOf(results[p.EventID()])
	}
	return out
}

// resultOf turns an ingest result into a /send result: an error unless
// the event was accepted or soft-failed (which the sender cannot change).
func resultOf(r *rooms.IngestResult) pduResult {
	switch {
	case r == nil:
		return pduResult{Error: "Event not processed"}
	case !r.Stored && r.Err != nil:
		return pduResult{Error: r.Err.Error()}
	case !r.Stored:
		return pduResult{Error: "Event not stored"}
	case r.Status == rooms.StatusRejected:
		msg := "Event rejected"
		if r.Err != nil {
			msg = fmt.Sprintf("Event rejected: %v", r.Err)
		}
		return pduResult{Error: msg}
	}
	return pduResult{}
}
