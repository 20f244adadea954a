package federation

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// FuzzParsePDU feeds arbitrary bytes to the PDU parser of several room
// versions: it must refuse or accept them without panicking, and an
// accepted PDU has an event ID and a room.
func FuzzParsePDU(f *testing.F) {
	for _, seed := range []string{
		`null`, `{}`, `[]`, `{"room_id":5}`,
		`{"type":"m.room.message","room_id":"!r:a","sender":"@u:a","content":{"body":"x"},"prev_events":[],"auth_events":[],"depth":1,"origin_server_ts":1,"hashes":{"sha256":"x"},"signatures":{}}`,
		`{"type":"m.room.member","state_key":"@u:a","room_id":"!r","sender":"@u:a","content":{"membership":"join","third_party_invite":{"signed":{"mxid":"@u:a"}}},"prev_events":["$p"],"auth_events":["$a"],"depth":2,"origin_server_ts":1,"hashes":{"sha256":"x"},"signatures":{}}`,
	} {
		f.Add([]byte(seed))
	}
	versions := []gomatrixserverlib.RoomVersion{gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, v := range versions {
			pdu, err := parsePDU(gomatrixserverlib.MustGetRoomVersion(v), raw)
			if err != nil {
				continue
			}
			if pdu == nil || pdu.EventID() == "" || pdu.RoomID().String() == "" {
				t.Fatalf("v%s accepted %q without an event ID or room", v, raw)
			}
		}
	})
}
