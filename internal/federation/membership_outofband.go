package federation

import (
	"context"
	"encoding/json"
	"log/slog"
)

// receiveOutOfBand handles PDUs that /send delivers for a room this server
// does not follow but where a local user has an out-of-band invite: the
// inviter withdrawing the invite (a leave of the invitee) is recorded, so
// that /sync shows it. Other PDUs of such rooms are dropped, as are those
// of rooms this server knows nothing of.
func (s *Service) receiveOutOfBand(ctx context.Context, origin, roomID string, raws []json.RawMessage) {
	ver, ok, err := s.rooms.OutOfBandRoomVersion(ctx, roomID)
	if err != nil || !ok {
		if err != nil {
			slog.Error("federation: /send: out-of-band room version", "room", roomID, "err", err)
		}
		return
	}
	for _, raw := range raws {
		pdu, err := s.VerifyPDU(ctx, ver, raw)
		if err != nil || pdu.RoomID().String() != roomID {
			continue
		}
		if ok, err := s.rooms.AcceptOutOfBandRescind(ctx, pdu); err != nil {
			slog.Error("federation: /send: recording a withdrawn invite", "origin", origin, "event", pdu.EventID(), "err", err)
		} else if ok {
			slog.Debug("federation: an out-of-band invite was withdrawn", "origin", origin, "event", pdu.EventID())
		}
	}
}
