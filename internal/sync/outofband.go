package sync

import (
	"context"
	"encoding/json"
)

// outOfBandLeave builds the leave entry of a room the user left without
// this server following it (a rejected invite or a retracted knock of a
// room of another server): its timeline is the leave event alone, as the
// room's history is not known here. ok is false for other rooms.
func (s *Service) outOfBandLeave(ctx context.Context, userID, roomID string) (lr *JoinedRoom, ok bool, err error) {
	ev, err := s.rooms.OutOfBandLeave(ctx, roomID, userID)
	if err != nil || ev == nil {
		return nil, false, err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, false, err
	}
	return &JoinedRoom{Timeline: Timeline{Events: []json.RawMessage{raw}}, State: &EventList{Events: []json.RawMessage{}}}, true, nil
}
