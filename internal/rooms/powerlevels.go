package rooms

import (
	"context"
	"encoding/json"
	"math"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// CreatorPower is the effective power level of a room creator in room
// versions with privileged creators (v12): above any level a power_levels
// event can grant.
const CreatorPower = math.MaxInt64

// powerInfo is the power structure of a room at some state.
type powerInfo struct {
	levels   gomatrixserverlib.PowerLevelContent
	creators map[string]bool // privileged creators (v12), else empty
}

// UserLevel is userID's power level.
func (p *powerInfo) UserLevel(userID string) int64 {
	if p.creators[userID] {
		return CreatorPower
	}
	return p.levels.UserLevel(spec.SenderID(userID))
}

// powerAt computes the power structure of a state (events built in the
// current batch, byKey, win over stored state).
func (e *Engine) powerAt(ctx context.Context, ri *roomInfo, state StateMap, byKey map[StateKey]*Event) (*powerInfo, error) {
	get := func(typ string) (*Event, error) {
		if ev, ok := byKey[StateKey{typ, ""}]; ok {
			return ev, nil
		}
		return e.stateEvent(ctx, ri, state, typ, "")
	}
	create, err := get(spec.MRoomCreate)
	if err != nil {
		return nil, err
	}
	pl, err := get(spec.MRoomPowerLevels)
	if err != nil {
		return nil, err
	}
	p := &powerInfo{creators: map[string]bool{}}
	if pl != nil {
		c, err := pl.PowerLevels()
		if err != nil {
			return nil, err
		}
		p.levels = *c
	} else if create != nil {
		// No power_levels event yet: the creator has 100, everyone else 0.
		p.levels.Defaults()
		p.levels.Users = map[string]int64{string(create.SenderID()): 100}
		p.levels.UsersDefault = 0
	}
	if create != nil && ri.verImpl.PrivilegedCreators() {
		p.creators[string(create.SenderID())] = true
		var c struct {
			AdditionalCreators []string `json:"additional_creators"`
		}
		if json.Unmarshal(create.Content(), &c) == nil {
			for _, u := range c.AdditionalCreators {
				p.creators[u] = true
			}
		}
	}
	return p, nil
}

// PowerLevels returns the current power levels of a room and its privileged
// creators (v12 rooms).
func (e *Engine) PowerLevels(ctx context.Context, roomID string) (levels gomatrixserverlib.PowerLevelContent, creators []string, err error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return levels, nil, err
	}
	p, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return levels, nil, err
	}
	for c := range p.creators {
		creators = append(creators, c)
	}
	return p.levels, creators, nil
}

// UserPowerLevel returns a user's current power level in a room.
func (e *Engine) UserPowerLevel(ctx context.Context, roomID, userID string) (int64, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return 0, err
	}
	p, err := e.powerAt(ctx, ri, ri.state, nil)
	if err != nil {
		return 0, err
	}
	return p.UserLevel(userID), nil
}
