package federation

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Palpo as a notary: GET /_matrix/key/v2/query/{serverName} and
// POST /_matrix/key/v2/query serve the keys of other servers (fetched and
// checked by the key ring, or from its cache when the server is down), each
// response signed by Palpo on top of its server's own signature.

// notaryFetchParallel bounds the outbound key fetches of one batch query.
const notaryFetchParallel = 8

// keyCriteria is the query for one server: the key IDs wanted (empty: all)
// and the time they should be valid until.
type keyCriteria struct {
	keyIDs   []string
	minValid time.Time
}

func (f *Federation) handleKeyQuery(r *http.Request) (any, error) {
	server := r.PathValue("serverName")
	if _, _, err := splitServerName(server); err != nil {
		return nil, httpx.InvalidParam("%v", err)
	}
	minValid := f.now()
	if s := r.URL.Query().Get("minimum_valid_until_ts"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms < 0 {
			return nil, httpx.InvalidParam("minimum_valid_until_ts must be a timestamp in milliseconds")
		}
		minValid = time.UnixMilli(ms)
	}
	return f.notaryAnswer(r.Context(), map[string]keyCriteria{server: {minValid: minValid}}), nil
}

func (f *Federation) handleKeyQueryBatch(r *http.Request) (any, error) {
	var body struct {
		ServerKeys map[string]map[string]struct {
			MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return nil, err
	}
	if body.ServerKeys == nil {
		return nil, httpx.BadJSON("server_keys is required")
	}
	now := f.now()
	query := map[string]keyCriteria{}
	for server, ids := range body.ServerKeys {
		if _, _, err := splitServerName(server); err != nil {
			continue // nothing can be known about it
		}
		c := keyCriteria{minValid: now}
		for id, crit := range ids {
			c.keyIDs = append(c.keyIDs, id)
			if crit.MinimumValidUntilTS != nil && time.UnixMilli(*crit.MinimumValidUntilTS).After(c.minValid) {
				c.minValid = time.UnixMilli(*crit.MinimumValidUntilTS)
			}
		}
		query[server] = c
	}
	return f.notaryAnswer(r.Context(), query), nil
}

// notaryAnswer builds {"server_keys": [...]} for a query. Servers with no
// keys known or fetchable are left out, as the spec says.
func (f *Federation) notaryAnswer(ctx context.Context, query map[string]keyCriteria) any {
	var (
		mu   sync.Mutex
		out  = []json.RawMessage{}
		wg   sync.WaitGroup
		gate = make(chan struct{}, notaryFetchParallel)
	)
	for server, c := range query {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate <- struct{}{}
			defer func() { <-gate }()
			raws := f.notaryResponses(ctx, server, c)
			mu.Lock()
			out = append(out, raws...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return map[string]any{"server_keys": out}
}

// notaryResponses returns server's key responses, signed by this server:
// from the cache when it satisfies the query and is fresh, else fetched
// anew (falling back to the cache when the server cannot be reached).
func (f *Federation) notaryResponses(ctx context.Context, server string, c keyCriteria) []json.RawMessage {
	if server == f.serverName {
		raw, err := f.own.response()
		if err != nil {
			slog.Error("notary: own keys", "err", err)
			return nil
		}
		return []json.RawMessage{raw}
	}
	cached, err := cachedResponses(ctx, f.db, server)
	if err != nil {
		slog.Error("notary: reading cached keys", "server", server, "err", err)
		return nil
	}
	if needsFetch(cached, c, f.now()) {
		if err := f.KeyRing.refreshDirect(ctx, server); err != nil {
			slog.Debug("notary: fetching keys", "server", server, "err", err)
		} else if cached, err = cachedResponses(ctx, f.db, server); err != nil {
			slog.Error("notary: reading cached keys", "server", server, "err", err)
			return nil
		}
	}
	out := make([]json.RawMessage, 0, len(cached))
	for _, r := range cached {
		signed, err := f.own.sign(r.raw)
		if err != nil {
			slog.Warn("notary: signing a cached response", "server", server, "err", err)
			continue
		}
		out = append(out, signed)
	}
	return out
}

// needsFetch reports whether the cached responses fall short of a query:
// none at all, a wanted key missing, none valid until the wanted time, or
// the freshest past half of its lifetime (the spec asks notaries to cache a
// response for half of its lifetime).
func needsFetch(cached []*cachedResponse, c keyCriteria, now time.Time) bool {
	if len(cached) == 0 {
		return true
	}
	for _, id := range c.keyIDs {
		if !slices.ContainsFunc(cached, func(r *cachedResponse) bool { return slices.Contains(r.keyIDs, id) }) {
			return true
		}
	}
	best := cached[0] // valid longest
	if best.validUntil.Before(c.minValid) {
		return true
	}
	return now.After(best.fetched.Add(best.validUntil.Sub(best.fetched) / 2))
}
