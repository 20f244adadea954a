package rooms

import (
	"context"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// redactionTarget returns the event a local redaction will redact, after
// checking that the sender may: its own event, or power at least the
// room's "redact" level. It returns nil (nothing to apply) for unknown
// events or events of another room, which the spec lets a redaction name.
func (e *Engine) redactionTarget(ctx context.Context, ri *roomInfo, state StateMap, byKey map[StateKey]*Event, redaction gomatrixserverlib.PDU) (*Event, error) {
	target, err := e.EventByID(ctx, redaction.Redacts())
	if err != nil {
		return nil, err
	}
	if target == nil || target.RoomID().String() != ri.id {
		return nil, nil
	}
	if target.SenderID() == redaction.SenderID() {
		return target, nil
	}
	p, err := e.powerAt(ctx, ri, state, byKey)
	if err != nil {
		return nil, err
	}
	if p.UserLevel(string(redaction.SenderID())) < p.levels.Redact {
		return nil, httpx.Forbidden("You may not redact other users' events")
	}
	return target, nil
}

// applyRedaction replaces the stored JSON of target by its redacted form.
// The original content is not kept: redacted data is gone for good.
func applyRedaction(ctx context.Context, tx *db.Tx, v gomatrixserverlib.IRoomVersion, target *Event, redactionID string) error {
	if target.RedactedBy != "" {
		return nil
	}
	redacted, err := redactEventJSON(v, target.JSON())
	if err != nil {
		return fmt.Errorf("redact %s: %w", target.EventID(), err)
	}
	_, err = tx.Exec(ctx, `UPDATE events SET json = $1, redacted_by = $2 WHERE nid = $3`, string(redacted), redactionID, target.NID)
	return err
}
