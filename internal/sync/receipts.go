package sync

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Receipt types.
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
	FullyRead          = "m.fully_read"
)

// Receipt is a stored receipt.
type Receipt struct {
	RoomID, Type, UserID, ThreadID, EventID string
	TS                                      int64
}

// StoreReceipt records a receipt (replacing the user's previous one of the
// same type in the same thread) with a new stream position.
func (s *Service) StoreReceipt(ctx context.Context, rc Receipt) error {
	var after func()
	err := s.db.WriteTx(ctx, func(tx *db.Tx) error {
		pos, err := db.NextStreamPos(ctx, tx)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos`,
			rc.RoomID, rc.Type, rc.UserID, rc.ThreadID, rc.EventID, rc.TS, pos)
		if err != nil || s.ReceiptStored == nil {
			return err
		}
		after, err = s.ReceiptStored(ctx, tx, rc)
		return err
	})
	if err != nil {
		return err
	}
	if after != nil {
		after()
	}
	if rc.Type == ReceiptReadPrivate {
		s.notifier.Wake(rc.UserID)
	} else {
		s.wakeRoom(ctx, rc.RoomID)
	}
	return nil
}

// receiptsEDU builds the m.receipt ephemeral event of a room from receipts
// with stream positions in (from, to] (from < 0: all), as seen by userID:
// private receipts only reach their owner.
func (s *Service) receiptsEDU(ctx context.Context, roomID, userID string, from, to int64) (json.RawMessage, error) {
	rows, err := s.db.Query(ctx, `SELECT receipt_type, user_id, thread_id, event_id, ts FROM receipts
		WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 AND (receipt_type <> 'm.read.private' OR user_id = $4)`,
		roomID, from, to, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	content := map[string]map[string]map[string]map[string]any{} // event → type → user → data
	for rows.Next() {
		var typ, user, thread, eventID string
		var ts int64
		if err := rows.Scan(&typ, &user, &thread, &eventID, &ts); err != nil {
			return nil, err
		}
		byType := content[eventID]
		if byType == nil {
			byType = map[string]map[string]map[string]any{}
			content[eventID] = byType
		}
		byUser := byType[typ]
		if byUser == nil {
			byUser = map[string]map[string]any{}
			byType[typ] = byUser
		}
		data := map[string]any{"ts": ts}
		if thread != "" {
			data["thread_id"] = thread
		}
		byUser[user] = data
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(content) == 0 {
		return nil, nil
	}
	return json.Marshal(map[string]any{"type": "m.receipt", "content": content})
}

// receiptRoomsSince lists the rooms with receipts in (from, to] visible to
// userID.
func (s *Service) receiptRoomsSince(ctx context.Context, userID string, from, to int64) (map[string]bool, error) {
	return s.db.QueryStringSet(ctx, `SELECT DISTINCT room_id FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 AND (receipt_type <> 'm.read.private' OR user_id = $3)`, from, to, userID)
}

func (s *Service) handleReceipt(r *http.Request, p *httpx.Principal) (any, error) {
	roomID, typ, eventID := r.PathValue("roomId"), r.PathValue("receiptType"), r.PathValue("eventId")
	var body struct {
		ThreadID string `json:"thread_id"`
	}
	if err := httpx.DecodeOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	switch typ {
	case ReceiptRead, ReceiptReadPrivate, FullyRead:
	default:
		return nil, httpx.InvalidParam("Unknown receipt type %q", typ)
	}
	if body.ThreadID != "" && typ == FullyRead {
		return nil, httpx.InvalidParam("m.fully_read does not take a thread_id")
	}
	if err := s.markRead(r.Context(), p.UserID, roomID, typ, eventID, body.ThreadID); err != nil {
		return nil, err
	}
	return httpx.Empty, nil
}

// markRead stores a receipt or the fully-read marker after checking the
// user is joined and the event belongs to the room.
func (s *Service) markRead(ctx context.Context, userID, roomID, typ, eventID, threadID string) error {
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	ev, err := s.rooms.EventByID(ctx, eventID)
	if err != nil {
		return err
	}
	if ev == nil || ev.RoomID().String() != roomID {
		return httpx.NotFound("Event not found in this room")
	}
	if threadID != "" && threadID != "main" && !validEventID(threadID) {
		return httpx.InvalidParam("Invalid thread_id %q", threadID)
	}
	if typ == FullyRead {
		content, _ := json.Marshal(map[string]string{"event_id": eventID})
		return s.accounts.SetAccountData(ctx, userID, roomID, FullyRead, content)
	}
	return s.StoreReceipt(ctx, Receipt{RoomID: roomID, Type: typ, UserID: userID, ThreadID: threadID, EventID: eventID, TS: time.Now().UnixMilli()})
}

func validEventID(id string) bool { return len(id) > 1 && id[0] == '$' && len(id) <= 255 }

func (s *Service) handleReadMarkers(r *http.Request, p *httpx.Principal) (any, error) {
	roomID := r.PathValue("roomId")
	var body map[string]json.RawMessage
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	marked := false
	for _, typ := range []string{FullyRead, ReceiptRead, ReceiptReadPrivate} {
		raw, ok := body[typ]
		if !ok {
			continue
		}
		var eventID string
		if err := json.Unmarshal(raw, &eventID); err != nil || !validEventID(eventID) {
			return nil, httpx.BadJSON("%s must be an event ID", typ)
		}
		if err := s.markRead(r.Context(), p.UserID, roomID, typ, eventID, ""); err != nil {
			return nil, err
		}
		marked = true
	}
	if !marked {
		// Nothing to mark, but a room the user is not in is still an error
		// (markRead checks membership otherwise).
		if err := s.requireJoined(r.Context(), roomID, p.UserID); err != nil {
			return nil, err
		}
	}
	return httpx.Empty, nil
}

// requireJoined answers 403 unless userID is joined to roomID.
func (s *Service) requireJoined(ctx context.Context, roomID, userID string) error {
	m, err := s.rooms.Membership(ctx, roomID, userID)
	if err != nil && !httpx.ErrIsMatrix(err, "M_NOT_FOUND") {
		return err
	}
	if m != spec.Join {
		return httpx.Forbidden("You are not joined to this room")
	}
	return nil
}
