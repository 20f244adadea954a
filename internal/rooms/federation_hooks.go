package rooms

import (
	"context"
	"math"

	"github.com/matrix-org/gomatrixserverlib"
)

// FederationHooks are how the room engine reaches other servers; the
// federation package fills them in. A nil hook means other servers cannot
// be asked: the engine answers from what it has.
type FederationHooks struct {
	// Backfill fetches history from before the room's earliest known
	// events from the other servers in the room and ingests it (AsBackfill);
	// it reports whether any event was added.
	Backfill func(ctx context.Context, roomID string) (added bool, err error)
	// PublicRooms asks server for a page of its public room directory.
	PublicRooms func(ctx context.Context, server string, req PublicRoomsRequest) (*PublicRoomsResponse, error)
	// ResolveAlias asks the alias's server for its room ID and the servers
	// in the room. A missing alias is an *httpx.Error M_NOT_FOUND.
	ResolveAlias func(ctx context.Context, alias string) (roomID string, servers []string, err error)
}

// pageWithBackfill continues a backward /messages page that reached the
// start of the history this server has: other servers are asked for what
// came before (when the page was not bounded by a `to` token), and the
// page goes on through what they sent. evs and next are the page so far.
func (e *Engine) pageWithBackfill(ctx context.Context, w *window, pp pageParams, keep func(*Event) (bool, error), evs []*Event, next int64) ([]*Event, int64, bool, error) {
	if e.Federation.Backfill == nil || pp.to != math.MinInt64 {
		return evs, next, false, nil
	}
	added, err := e.Federation.Backfill(ctx, w.ri.id)
	if err != nil || !added {
		// History from other servers is a best effort: the page stands.
		return evs, next, false, nil
	}
	more, next2, more2, err := e.page(ctx, w.ri, timelinePager(w, true, next, pp.to, pp.limit-len(evs), keep))
	if err != nil {
		return nil, 0, false, err
	}
	return append(evs, more...), next2, more2 || len(more) > 0, nil
}

// RedactEventJSON applies the room version's redaction algorithm to an
// event's JSON, corrected for room versions 11 and later (which keep
// content.third_party_invite.signed of membership events). Federation
// checks signatures and computes event IDs on the result.
func RedactEventJSON(v gomatrixserverlib.IRoomVersion, js []byte) ([]byte, error) {
	return redactEventJSON(v, js)
}

// EventsByTimestamp returns up to limit accepted events of a room nearest
// to ts in one direction — forward: origin_server_ts >= ts, earliest first;
// backward: <= ts, latest first — for federation's /timestamp_to_event,
// which then picks the first one the asking server may see.
func (e *Engine) EventsByTimestamp(ctx context.Context, roomID string, ts int64, forward bool, limit int) ([]*Event, error) {
	ri, err := e.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	cmp, order := ">=", "ASC"
	if !forward {
		cmp, order = "<=", "DESC"
	}
	nids, _, err := e.nidKeys(ctx, `SELECT nid, stream_pos FROM events WHERE room_id = $1 AND status = 0 AND origin_server_ts `+cmp+
		` $2 ORDER BY origin_server_ts `+order+`, stream_pos `+order+` LIMIT $3`, sqlArgs{roomID, ts, limit})
	if err != nil {
		return nil, err
	}
	return e.EventsByNID(ctx, ri.version, nids)
}
