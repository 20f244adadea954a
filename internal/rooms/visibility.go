package rooms

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// History visibility values.
const (
	VisWorldReadable = "world_readable"
	VisShared        = "shared"
	VisInvited       = "invited"
	VisJoined        = "joined"
)

// visibilityAt is what decides whether a user sees an event: the room's
// history visibility and the user's membership at that point.
type visibilityAt struct {
	visibility string
	membership string
}

// Visibility decides which events a user may see (client-server spec,
// "History visibility"). Create one per request: it caches per snapshot.
type Visibility struct {
	e           *Engine
	userID      string
	sharedUntil map[string]int64 // room → last stream position of shared history the user may see
	cache       map[int64]visibilityAt
}

// NewVisibility returns a visibility checker for userID.
func (e *Engine) NewVisibility(userID string) *Visibility {
	return &Visibility{e: e, userID: userID, sharedUntil: map[string]int64{}, cache: map[int64]visibilityAt{}}
}

// Filter returns the events the user may see, in order.
func (v *Visibility) Filter(ctx context.Context, evs []*Event) ([]*Event, error) {
	out := evs[:0:0]
	for _, ev := range evs {
		ok, err := v.CanSee(ctx, ev)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

// CanSee reports whether the user may see ev.
func (v *Visibility) CanSee(ctx context.Context, ev *Event) (bool, error) {
	if ev.Status == StatusRejected || ev.Status == StatusSoftFailed {
		return false, nil
	}
	at, err := v.at(ctx, ev)
	if err != nil {
		return false, err
	}
	membership := at.membership
	// A user always sees their own membership events (an invite they
	// rejected, a kick, a ban), as Synapse does.
	if ev.Type() == spec.MRoomMember && ev.StateKeyEquals(v.userID) {
		return true, nil
	}
	switch {
	case at.visibility == VisWorldReadable:
		return true, nil
	case membership == spec.Join:
		return true, nil
	case at.visibility == VisInvited && membership == spec.Invite:
		return true, nil
	case at.visibility == VisShared:
		until, err := v.sharedLimit(ctx, ev.RoomID().String())
		return ev.Pos <= until, err
	}
	return false, nil
}

// sharedLimit is the last stream position up to which "shared" history is
// visible to the user: everything while they are joined now; up to their
// departure when they were joined right before leaving; nothing otherwise.
func (v *Visibility) sharedLimit(ctx context.Context, roomID string) (int64, error) {
	if until, ok := v.sharedUntil[roomID]; ok {
		return until, nil
	}
	until := int64(-1 << 62)
	mem, err := v.e.CurrentStateEvent(ctx, roomID, spec.MRoomMember, v.userID)
	if err != nil {
		return 0, err
	}
	if mem != nil {
		m, _ := mem.Membership()
		switch m {
		case spec.Join:
			until = 1<<63 - 1
		case spec.Leave, spec.Ban:
			before, err := v.e.loadSnapshot(ctx, mem.StateBefore)
			if err != nil {
				return 0, err
			}
			ri, err := v.e.room(ctx, roomID)
			if err != nil {
				return 0, err
			}
			prev, err := v.e.stateEvent(ctx, ri, before, spec.MRoomMember, v.userID)
			if err != nil {
				return 0, err
			}
			if prev != nil {
				if pm, _ := prev.Membership(); pm == spec.Join {
					until = mem.Pos
				}
			}
		}
	}
	v.sharedUntil[roomID] = until
	return until, nil
}

func (v *Visibility) at(ctx context.Context, ev *Event) (visibilityAt, error) {
	if at, ok := v.cache[ev.StateBefore]; ok {
		return at, nil
	}
	state, err := v.e.loadSnapshot(ctx, ev.StateBefore)
	if err != nil {
		return visibilityAt{}, err
	}
	ri, err := v.e.room(ctx, ev.RoomID().String())
	if err != nil {
		return visibilityAt{}, err
	}
	at := visibilityAt{visibility: VisShared, membership: spec.Leave}
	if hv, err := v.e.stateEvent(ctx, ri, state, spec.MRoomHistoryVisibility, ""); err != nil {
		return at, err
	} else if hv != nil {
		if h, err := hv.HistoryVisibility(); err == nil {
			at.visibility = string(h)
		}
	}
	if mem, err := v.e.stateEvent(ctx, ri, state, spec.MRoomMember, v.userID); err != nil {
		return at, err
	} else if mem != nil {
		if m, err := mem.Membership(); err == nil {
			at.membership = m
		}
	}
	v.cache[ev.StateBefore] = at
	return at, nil
}

// Membership returns a user's current membership in a room ("leave" when
// they have none).
func (e *Engine) Membership(ctx context.Context, roomID, userID string) (string, error) {
	ev, err := e.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
	if err != nil || ev == nil {
		return spec.Leave, err
	}
	return ev.Membership()
}
