package rooms

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// ClientEvents formats events for a client. viewerDevice is the device of
// the requesting client: its own transaction IDs are echoed in
// unsigned.transaction_id.
func (e *Engine) ClientEvents(ctx context.Context, evs []*Event, viewerUser, viewerDevice string) ([]ClientEvent, error) {
	out := make([]ClientEvent, 0, len(evs))
	for _, ev := range evs {
		ce, err := e.ClientEvent(ctx, ev, viewerUser, viewerDevice)
		if err != nil {
			return nil, err
		}
		out = append(out, ce)
	}
	return out, nil
}

// ClientEvent formats one event for a client.
func (e *Engine) ClientEvent(ctx context.Context, ev *Event, viewerUser, viewerDevice string) (ClientEvent, error) {
	ce := ClientEvent{
		Content:        json.RawMessage(ev.Content()),
		EventID:        ev.EventID(),
		OriginServerTS: int64(ev.OriginServerTS()),
		RoomID:         ev.RoomID().String(),
		Sender:         string(ev.SenderID()),
		StateKey:       ev.StateKey(),
		Type:           ev.Type(),
		Redacts:        ev.Redacts(),
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	if ce.Type == spec.MRoomRedaction && ce.Redacts == "" {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		ce.Redacts = c.Redacts
	}
	unsigned := map[string]any{"age": max(time.Now().UnixMilli()-int64(ev.OriginServerTS()), 0)}
	if ev.TxnID != "" && viewerUser == string(ev.SenderID()) {
		if dev, txn, ok := strings.Cut(ev.TxnID, " "); ok && dev == viewerDevice {
			unsigned["transaction_id"] = txn
		}
	}
	if ev.RedactedBy != "" {
		if r, err := e.EventByID(ctx, ev.RedactedBy); err == nil && r != nil {
			rc, err := e.ClientEvent(ctx, r, "", "")
			if err == nil {
				unsigned["redacted_because"] = rc
			}
		}
	}
	if ev.IsState() && ev.StateBefore != 0 {
		before, err := e.loadSnapshot(ctx, ev.StateBefore)
		if err != nil {
			return ce, err
		}
		if nid, ok := before[ev.Key()]; ok {
			if prev, err := e.EventsByNID(ctx, ev.Version(), []int64{nid}); err == nil && len(prev) == 1 {
				unsigned["replaces_state"] = prev[0].EventID()
				unsigned["prev_content"] = json.RawMessage(prev[0].Content())
				unsigned["prev_sender"] = string(prev[0].SenderID())
			}
		}
	}
	ce.Unsigned = unsigned
	return ce, nil
}

// StrippedState is the stripped form of a state event (invites, knocks).
type StrippedState struct {
	Content  json.RawMessage `json:"content"`
	Sender   string          `json:"sender"`
	StateKey string          `json:"state_key"`
	Type     string          `json:"type"`
}
