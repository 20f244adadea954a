package rooms

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// LeaveAllRooms takes a user out of every room: it leaves the rooms they
// are joined to, rejects their invites and withdraws their knocks. It is
// run when an account is deactivated. A room that fails does not stop the
// others; the failures are returned together.
func (e *Engine) LeaveAllRooms(ctx context.Context, userID string) error {
	var errs []error
	for _, m := range []string{spec.Join, spec.Invite, spec.Knock} {
		rooms, err := e.roomsWithMembership(ctx, userID, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, roomID := range rooms {
			if _, err := e.SetMembership(ctx, roomID, userID, userID, spec.Leave, "", nil); err != nil {
				errs = append(errs, fmt.Errorf("leave %s (%s): %w", roomID, m, err))
			}
		}
	}
	return errors.Join(errs...)
}
