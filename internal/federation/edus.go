package federation

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/palpo-go/palpo/internal/sync"
)

// EDUs: typing notifications, receipts and presence in and out (applied
// through, and read from, the sync domain); the EDUs of end-to-end
// encryption go to EDUHooks.

// EDU types.
const (
	eduTyping           = "m.typing"
	eduReceipt          = "m.receipt"
	eduPresence         = "m.presence"
	eduDeviceListUpdate = "m.device_list_update"
	eduDirectToDevice   = "m.direct_to_device"
	eduSigningKeyUpdate = "m.signing_key_update"
)

// typingContent is the content of m.typing.
type typingContent struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Typing bool   `json:"typing"`
}

// receiptContent is the content of m.receipt: room → receipt type → user
// → receipt.
type receiptContent map[string]map[string]map[string]userReceipt

// userReceipt is one user's receipt in m.receipt.
type userReceipt struct {
	EventIDs []string `json:"event_ids"`
	Data     struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id,omitempty"`
	} `json:"data"`
}

// presenceContent is the content of m.presence.
type presenceContent struct {
	Push []presenceUpdate `json:"push"`
}

// presenceUpdate is one user's entry in m.presence.
type presenceUpdate struct {
	UserID          string  `json:"user_id"`
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveAgo   int64   `json:"last_active_ago"`
	CurrentlyActive bool    `json:"currently_active"`
}

// receiveEDU applies one EDU of a transaction. Malformed EDUs, and parts
// about users of other servers than origin or rooms whose server ACL
// denies origin, are ignored.
func (s *Service) receiveEDU(ctx context.Context, origin string, e edu) {
	var hook func(context.Context, string, json.RawMessage)
	switch e.Type {
	case eduTyping:
		s.receiveTyping(ctx, origin, e.Content)
	case eduReceipt:
		s.receiveReceipts(ctx, origin, e.Content)
	case eduPresence:
		s.receivePresence(ctx, origin, e.Content)
	case eduDeviceListUpdate:
		hook = s.EDUHooks.DeviceListUpdate
	case eduDirectToDevice:
		hook = s.EDUHooks.DirectToDevice
	case eduSigningKeyUpdate:
		hook = s.EDUHooks.SigningKeyUpdate
	default:
		slog.Debug("federation: ignoring an EDU of unknown type", "origin", origin, "type", e.Type)
	}
	if hook != nil {
		hook(ctx, origin, e.Content)
	}
}

// joinedFrom reports whether userID belongs to origin and is joined to
// roomID, whose ACL allows origin.
func (s *Service) joinedFrom(ctx context.Context, origin, roomID, userID string) bool {
	if serverOfUser(userID) != origin {
		return false
	}
	if ok, err := s.rooms.ServerAllowed(ctx, roomID, origin); err != nil || !ok {
		return false
	}
	m, err := s.rooms.Membership(ctx, roomID, userID)
	return err == nil && m == spec.Join
}

func (s *Service) receiveTyping(ctx context.Context, origin string, raw json.RawMessage) {
	var c typingContent
	if json.Unmarshal(raw, &c) != nil || !s.joinedFrom(ctx, origin, c.RoomID, c.UserID) {
		return
	}
	s.sync.ApplyRemoteTyping(c.RoomID, c.UserID, c.Typing)
}

func (s *Service) receiveReceipts(ctx context.Context, origin string, raw json.RawMessage) {
	var c receiptContent
	if json.Unmarshal(raw, &c) != nil {
		return
	}
	for roomID, byType := range c {
		for userID, rc := range byType[sync.ReceiptRead] {
			if len(rc.EventIDs) == 0 || !s.joinedFrom(ctx, origin, roomID, userID) {
				continue
			}
			eventID := rc.EventIDs[len(rc.EventIDs)-1]
			ev, err := s.rooms.EventByID(ctx, eventID)
			if err != nil || ev == nil || ev.RoomID().String() != roomID {
				continue // a receipt for an event this server does not have
			}
			err = s.sync.StoreReceipt(ctx, sync.Receipt{RoomID: roomID, Type: sync.ReceiptRead, UserID: userID,
				ThreadID: rc.Data.ThreadID, EventID: eventID, TS: rc.Data.TS})
			if err != nil {
				slog.Error("federation: storing a remote receipt", "room", roomID, "user", userID, "err", err)
			}
		}
	}
}

func (s *Service) receivePresence(ctx context.Context, origin string, raw json.RawMessage) {
	var c presenceContent
	if json.Unmarshal(raw, &c) != nil {
		return
	}
	for _, p := range c.Push {
		if serverOfUser(p.UserID) != origin {
			continue
		}
		// Only users who share a room with this server are of interest.
		if joined, err := s.rooms.JoinedRooms(ctx, p.UserID); err != nil || len(joined) == 0 {
			continue
		}
		err := s.sync.ApplyRemotePresence(ctx, sync.RemotePresence{UserID: p.UserID, Presence: p.Presence,
			StatusMsg: p.StatusMsg, LastActiveAgo: p.LastActiveAgo, CurrentlyActive: p.CurrentlyActive})
		if err != nil {
			slog.Error("federation: storing remote presence", "user", p.UserID, "err", err)
		}
	}
}

// receiptEDUs groups local receipts into m.receipt contents, one per room.
func receiptEDUs(rcs []sync.Receipt) map[string]receiptContent {
	out := map[string]receiptContent{}
	for _, rc := range rcs {
		c := out[rc.RoomID]
		if c == nil {
			c = receiptContent{rc.RoomID: {sync.ReceiptRead: {}}}
			out[rc.RoomID] = c
		}
		var ur userReceipt
		ur.EventIDs = []string{rc.EventID}
		ur.Data.TS, ur.Data.ThreadID = rc.TS, rc.ThreadID
		c[rc.RoomID][sync.ReceiptRead][rc.UserID] = ur
	}
	return out
}
