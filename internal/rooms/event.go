package rooms

import (
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"
)

// Event statuses as stored.
const (
	StatusAccepted   = 0
	StatusRejected   = 1
	StatusSoftFailed = 2
	StatusOutlier    = 3
)

// Event is a stored event: the PDU with its storage numbers.
type Event struct {
	gomatrixserverlib.PDU
	NID         int64  // numeric ID in the events table
	Pos         int64  // stream position
	StateBefore int64  // state snapshot before the event
	Status      int    // StatusAccepted, …
	RedactedBy  string // event ID of the redaction, if redacted
	TxnID       string // "deviceID txnID" of the local sender's request
}

// IsState reports whether the event is a state event.
func (ev *Event) IsState() bool { return ev.StateKey() != nil }

// Key is the state key tuple of a state event.
func (ev *Event) Key() StateKey {
	sk := ev.StateKey()
	if sk == nil {
		return StateKey{}
	}
	return StateKey{ev.Type(), *sk}
}

// ClientEvent is an event in the client-server API's format.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       map[string]any  `json:"unsigned,omitempty"`
}
