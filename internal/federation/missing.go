package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	gosync "sync"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/rooms"
)

// Filling gaps: events received from another server (a transaction, a
// backfill) may refer to events this server lacks.
//
//   - Missing auth events: the event's auth chain is fetched
//     (/event_auth) and stored as outliers, then the event is tried again.
//   - Missing prev events: the events between ours and the new ones are
//     asked for (/get_missing_events, a bounded walk back from the new
//     events to our forward extremities) and ingested oldest first; where
//     the gap stays open, the state at each missing prev event is fetched
//     (/state_ids, then the events not known, by /event or /state) and
//     given to the engine with WithPrevState, so that the new events can
//     be checked against it.
//
// Every fetched event goes through the same checks as a received one
// (VerifyPDU); those that fail are dropped.

// Gap-filling limits.
const (
	// missingEventsLimit is the limit of a /get_missing_events request.
	missingEventsLimit = 20
	// maxGapPrevs bounds the missing prev events filled from /state_ids
	// for one batch.
	maxGapPrevs = 10
	// maxAuthFetches bounds the /event_auth requests for one batch.
	maxAuthFetches = 10
	// fetchConcurrency bounds the parallel /event requests.
	fetchConcurrency = 8
	// stateByEventsMax is how many unknown state events are fetched one by
	// one (/event); more are fetched at once with /state.
	stateByEventsMax = 50
)

// ingest ingests verified PDUs of a room received from server, filling
// gaps by asking server, and returns the results by event ID. backfill
// marks them as history from before the room's start (rooms.AsBackfill);
// then no /get_missing_events is made (there is nothing newer to walk to).
func (s *Service) ingest(ctx context.Context, roomID, server string, pdus []gomatrixserverlib.PDU, backfill bool) (map[string]*rooms.IngestResult, error) {
	ver, err := s.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var opts []rooms.IngestOption
	if backfill {
		opts = append(opts, rooms.AsBackfill())
	}
	results := map[string]*rooms.IngestResult{}
	if err := s.ingestRound(ctx, roomID, server, ver, pdus, results, opts...); err != nil {
		return nil, err
	}
	gap := withMissingPrevs(pdus, results)
	if len(gap) == 0 {
		return results, nil
	}
	batch := gap
	if !backfill {
		fetched := s.getMissingEvents(ctx, roomID, server, ver, gap)
		if len(fetched) > 0 {
			batch = append(fetched, gap...)
			if err := s.ingestRound(ctx, roomID, server, ver, batch, results, opts...); err != nil {
				return nil, err
			}
			if batch = withMissingPrevs(batch, results); len(batch) == 0 {
				return results, nil
			}
		}
	}
	// The gap is still open: supply the state at the missing prev events
	// that nothing in the batch provides.
	inBatch := map[string]bool{}
	for _, p := range batch {
		inBatch[p.EventID()] = true
	}
	var frontier []string
	for _, p := range batch {
		for _, prev := range results[p.EventID()].MissingPrevs {
			if !inBatch[prev] && !slices.Contains(frontier, prev) && len(frontier) < maxGapPrevs {
				frontier = append(frontier, prev)
			}
		}
	}
	supplied := slices.Clone(opts)
	for _, prev := range frontier {
		stateIDs, err := s.fetchStateAt(ctx, roomID, server, ver, prev)
		if err != nil {
			slog.Info("federation: cannot fetch the state at a missing event", "server", server, "room", roomID, "event", prev, "err", err)
			continue
		}
		supplied = append(supplied, rooms.WithPrevState(prev, stateIDs))
	}
	if len(supplied) == len(opts) {
		return results, nil
	}
	if err := s.ingestRound(ctx, roomID, server, ver, batch, results, supplied...); err != nil {
		return nil, err
	}
	return results, nil
}

// ingestRound ingests a batch and records the results; events whose auth
// events are missing get their auth chain fetched and are tried again.
func (s *Service) ingestRound(ctx context.Context, roomID, server string, ver gomatrixserverlib.RoomVersion, batch []gomatrixserverlib.PDU, results map[string]*rooms.IngestResult, opts ...rooms.IngestOption) error {
	res, err := s.rooms.IngestEvents(ctx, roomID, batch, opts...)
	if err != nil {
		return err
	}
	var again []gomatrixserverlib.PDU
	for i := range res {
		results[res[i].EventID] = &res[i]
		if len(res[i].MissingAuth) > 0 && len(again) < maxAuthFetches {
			again = append(again, batch[i])
		}
	}
	if len(again) == 0 {
		return nil
	}
	fetchedAny := false
	for _, p := range again {
		if err := s.fetchAuthChain(ctx, roomID, server, ver, p.EventID()); err != nil {
			slog.Info("federation: cannot fetch an auth chain", "server", server, "event", p.EventID(), "err", err)
			continue
		}
		fetchedAny = true
	}
	if !fetchedAny {
		return nil
	}
	res, err = s.rooms.IngestEvents(ctx, roomID, again, opts...)
	if err != nil {
		return err
	}
	for i := range res {
		results[res[i].EventID] = &res[i]
	}
	return nil
}

// withMissingPrevs returns the PDUs whose results say prev events are
// missing.
func withMissingPrevs(pdus []gomatrixserverlib.PDU, results map[string]*rooms.IngestResult) []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	for _, p := range pdus {
		if r := results[p.EventID()]; r != nil && !r.Stored && len(r.MissingPrevs) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// getMissingEvents asks server for the events between the room's forward
// extremities and the gap's events, and returns those that pass the
// checks, oldest first.
func (s *Service) getMissingEvents(ctx context.Context, roomID, server string, ver gomatrixserverlib.RoomVersion, gap []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	earliest, err := s.rooms.ForwardExtremities(ctx, roomID)
	if err != nil {
		return nil
	}
	latest := make([]string, len(gap))
	for i, p := range gap {
		latest[i] = p.EventID()
	}
	req := map[string]any{"limit": missingEventsLimit, "min_depth": 0, "earliest_events": earliest, "latest_events": latest}
	var resp struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := s.fed.Client.Do(ctx, server, http.MethodPost, "/_matrix/federation/v1/get_missing_events/"+url.PathEscape(roomID), req, &resp); err != nil {
		slog.Info("federation: /get_missing_events failed", "server", server, "room", roomID, "err", err)
		return nil
	}
	evs := s.verifyRemotePDUs(ctx, roomID, ver, resp.Events)
	seen := map[string]bool{}
	for _, p := range gap {
		seen[p.EventID()] = true
	}
	out := evs[:0]
	for _, p := range evs {
		if seen[p.EventID()] {
			continue
		}
		seen[p.EventID()] = true
		// The walk may go past the gap on other branches: skip what this
		// server has in its timeline already.
		if ev, err := s.rooms.EventByID(ctx, p.EventID()); err == nil && ev != nil && ev.Status != rooms.StatusOutlier {
			continue
		}
		out = append(out, p)
	}
	slices.SortStableFunc(out, func(a, b gomatrixserverlib.PDU) int { return int(a.Depth() - b.Depth()) })
	return out
}

// verifyRemotePDUs checks PDUs of a room fetched from another server and
// returns those that pass, in order.
func (s *Service) verifyRemotePDUs(ctx context.Context, roomID string, ver gomatrixserverlib.RoomVersion, raws []json.RawMessage) []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, 0, len(raws))
	for _, raw := range raws {
		p, err := s.VerifyPDU(ctx, ver, raw)
		if err != nil {
			slog.Debug("federation: dropping a fetched event", "room", roomID, "err", err)
			continue
		}
		if p.RoomID().String() != roomID {
			continue
		}
		out = append(out, p)
	}
	return out
}

// fetchAuthChain fetches an event's auth chain (/event_auth) and stores
// it as outliers.
func (s *Service) fetchAuthChain(ctx context.Context, roomID, server string, ver gomatrixserverlib.RoomVersion, eventID string) error {
	var resp struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	uri := "/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, uri, nil, &resp); err != nil {
		return err
	}
	chain := s.verifyRemotePDUs(ctx, roomID, ver, resp.AuthChain)
	_, err := s.rooms.IngestEvents(ctx, roomID, chain, rooms.AsOutliers())
	return err
}

// fetchStateAt fetches the state before eventID from server (/state_ids),
// stores the state events, their auth chains and the event itself as
// outliers when this server lacks them, and returns the state's event IDs.
func (s *Service) fetchStateAt(ctx context.Context, roomID, server string, ver gomatrixserverlib.RoomVersion, eventID string) ([]string, error) {
	var ids struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	q := url.Values{"event_id": {eventID}}
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/state_ids/"+url.PathEscape(roomID)+"?"+q.Encode(), nil, &ids); err != nil {
		return nil, err
	}
	var need []string
	seen := map[string]bool{}
	for _, id := range append(append(slices.Clone(ids.AuthChainIDs), ids.PDUIDs...), eventID) {
		if seen[id] {
			continue
		}
		seen[id] = true
		ev, err := s.rooms.EventByID(ctx, id)
		if err != nil {
			return nil, err
		}
		if ev == nil {
			need = append(need, id)
		}
	}
	var fetched []gomatrixserverlib.PDU
	if len(need) > stateByEventsMax {
		var full struct {
			PDUs      []json.RawMessage `json:"pdus"`
			AuthChain []json.RawMessage `json:"auth_chain"`
		}
		if err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/state/"+url.PathEscape(roomID)+"?"+q.Encode(), nil, &full); err != nil {
			return nil, err
		}
		fetched = s.verifyRemotePDUs(ctx, roomID, ver, append(full.AuthChain, full.PDUs...))
		if slices.Contains(need, eventID) {
			if p, err := s.fetchEvent(ctx, server, roomID, ver, eventID); err == nil {
				fetched = append(fetched, p)
			}
		}
	} else {
		fetched = s.fetchEvents(ctx, server, roomID, ver, need)
	}
	if len(fetched) > 0 {
		if _, err := s.rooms.IngestEvents(ctx, roomID, fetched, rooms.AsOutliers()); err != nil {
			return nil, err
		}
	}
	return ids.PDUIDs, nil
}

// fetchEvents fetches events by ID from server, in parallel, and returns
// those that pass the checks.
func (s *Service) fetchEvents(ctx context.Context, server, roomID string, ver gomatrixserverlib.RoomVersion, ids []string) []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, len(ids))
	var wg gosync.WaitGroup
	sem := make(chan struct{}, fetchConcurrency)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			p, err := s.fetchEvent(ctx, server, roomID, ver, id)
			if err != nil {
				slog.Debug("federation: cannot fetch an event", "server", server, "event", id, "err", err)
				return
			}
			out[i] = p
		}()
	}
	wg.Wait()
	return slices.DeleteFunc(out, func(p gomatrixserverlib.PDU) bool { return p == nil })
}

// fetchEvent fetches one event of a room from server (/event) and checks
// it.
func (s *Service) fetchEvent(ctx context.Context, server, roomID string, ver gomatrixserverlib.RoomVersion, eventID string) (gomatrixserverlib.PDU, error) {
	var resp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := s.fed.Client.Do(ctx, server, http.MethodGet, "/_matrix/federation/v1/event/"+url.PathEscape(eventID), nil, &resp); err != nil {
		return nil, err
	}
	if len(resp.PDUs) != 1 {
		return nil, fmt.Errorf("%s answered %d events for %s", server, len(resp.PDUs), eventID)
	}
	p, err := s.VerifyPDU(ctx, ver, resp.PDUs[0])
	if err != nil {
		return nil, err
	}
	if p.EventID() != eventID || p.RoomID().String() != roomID {
		return nil, fmt.Errorf("%s answered another event (%s) for %s", server, p.EventID(), eventID)
	}
	return p, nil
}
