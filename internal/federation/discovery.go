package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"golang.org/x/sync/singleflight"

	"github.com/palpo-go/palpo/internal/cache"
)

// Server discovery, as the server-server spec's "Resolving server names"
// section describes it: IP literals, explicit ports, .well-known/matrix/server
// delegation (cached), SRV records (_matrix-fed._tcp, then the deprecated
// _matrix._tcp) and the default port 8448. The static overrides of
// federation.resolve come first.

// DefaultFederationPort is the port used when neither the server name, a
// delegation nor an SRV record gives one.
const DefaultFederationPort = 8448

// Cache times for .well-known/matrix/server answers, as the spec
// recommends: 24 hours without cache headers, at most 48 hours, errors for
// an hour. A floor keeps "no-store" answers from being fetched again on
// every request.
const (
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownMinTTL     = 5 * time.Minute
	wellKnownErrorTTL   = time.Hour
	// wellKnownGrace keeps using a delegation that expired while its server
	// cannot be reached, instead of falling back to SRV and port 8448.
	wellKnownGrace = 10 * time.Minute
	// wellKnownMaxBytes bounds the .well-known body.
	wellKnownMaxBytes = 50 << 10
	// resultTTL bounds how long a whole resolution (including SRV answers,
	// whose DNS TTL Go does not expose) is reused.
	resultTTL = 5 * time.Minute
)

// Destination says how to reach a server: the addresses to try in order, the
// Host header to send and the name its TLS certificate must be valid for.
type Destination struct {
	// Addrs are host:port pairs; a host that is a name is resolved (A/AAAA)
	// when it is dialled.
	Addrs []string
	// Host is the value of the Host header.
	Host string
	// TLSServerName is the name (or IP address) the certificate must cover.
	// For an IP address no SNI is sent, as the spec asks.
	TLSServerName string
}

// SRVLookup looks up SRV records, with net.Resolver.LookupSRV's contract.
type SRVLookup func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)

// Resolver turns server names into Destinations.
type Resolver struct {
	static    map[string]string
	lookupSRV SRVLookup
	// wellKnown fetches https://<host>/.well-known/matrix/server; its
	// transport must use the address policy's dialer.
	wellKnown *http.Client
	now       func() time.Time

	wkCache  *cache.LRU[string, wellKnownEntry]
	resCache *cache.LRU[string, resolved]
	flight   singleflight.Group
}

type wellKnownEntry struct {
	delegated string    // m.server, or "" for an error or an invalid answer
	expires   time.Time // when to fetch again
	grace     time.Time // a valid delegation may be used until then if fetching fails
}

type resolved struct {
	dest    *Destination
	expires time.Time
}

// NewResolver returns a Resolver. static maps server names to host:port
// (federation.resolve); lookupSRV defaults to the system resolver;
// wellKnown is the client used for .well-known requests.
func NewResolver(static map[string]string, lookupSRV SRVLookup, wellKnown *http.Client) *Resolver {
	if lookupSRV == nil {
		lookupSRV = net.DefaultResolver.LookupSRV
	}
	return &Resolver{
		static:    static,
		lookupSRV: lookupSRV,
		wellKnown: wellKnown,
		now:       time.Now,
		wkCache:   cache.NewLRU[string, wellKnownEntry](4096),
		resCache:  cache.NewLRU[string, resolved](4096),
	}
}

// Resolve finds where requests for serverName go.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (*Destination, error) {
	if addr, ok := r.static[serverName]; ok {
		host, _, _ := splitServerName(serverName)
		return &Destination{Addrs: []string{addr}, Host: serverName, TLSServerName: unbracket(host)}, nil
	}
	if res, ok := r.resCache.Get(serverName); ok && r.now().Before(res.expires) {
		return res.dest, nil
	}
	v, err, _ := r.flight.Do(serverName, func() (any, error) {
		dest, ttl, err := r.resolve(ctx, serverName)
		if err != nil {
			return nil, err
		}
		r.resCache.Put(serverName, resolved{dest: dest, expires: r.now().Add(ttl)})
		return dest, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Destination), nil
}

// resolve runs the discovery steps; ttl says how long the answer may be
// reused.
func (r *Resolver) resolve(ctx context.Context, serverName string) (dest *Destination, ttl time.Duration, err error) {
	host, port, err := splitServerName(serverName)
	if err != nil {
		return nil, 0, err
	}
	// Steps 1 and 2: an IP literal or an explicit port needs no lookups.
	if d := direct(serverName, host, port); d != nil {
		return d, resultTTL, nil
	}
	// Step 3: .well-known delegation.
	ttl = resultTTL
	if delegated, expires := r.delegation(ctx, host); delegated != "" {
		if until := expires.Sub(r.now()); until < ttl {
			ttl = max(until, time.Second)
		}
		dhost, dport, err := splitServerName(delegated)
		if err != nil {
			return nil, 0, err // cannot happen: validated when fetched
		}
		// Steps 3.1 and 3.2: the Host header is the delegated name as given.
		if d := direct(delegated, dhost, dport); d != nil {
			return d, ttl, nil
		}
		// Steps 3.3 to 3.5.
		return r.srvOrDefault(ctx, dhost), ttl, nil
	}
	// Steps 4 to 6.
	return r.srvOrDefault(ctx, host), ttl, nil
}

// direct handles a name that is an IP literal or has an explicit port; it
// returns nil for a bare host name.
func direct(name, host string, port int) *Destination {
	if ip := unbracket(host); net.ParseIP(ip) != nil {
		if port < 0 {
			port = DefaultFederationPort
		}
		return &Destination{Addrs: []string{net.JoinHostPort(ip, strconv.Itoa(port))}, Host: name, TLSServerName: ip}
	}
	if port >= 0 {
		return &Destination{Addrs: []string{net.JoinHostPort(host, strconv.Itoa(port))}, Host: name, TLSServerName: host}
	}
	return nil
}

// srvOrDefault looks up _matrix-fed._tcp.<host>, then _matrix._tcp.<host>,
// and falls back to <host>:8448. The certificate must be valid for host,
// whatever the SRV targets are.
func (r *Resolver) srvOrDefault(ctx context.Context, host string) *Destination {
	dest := &Destination{Host: host, TLSServerName: host}
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, records, err := r.lookupSRV(ctx, service, "tcp", host)
		if err != nil {
			continue // not found, or a DNS failure: try the next step
		}
		for _, rec := range records {
			target := strings.TrimSuffix(rec.Target, ".")
			if target == "" {
				continue // "." means the service is not offered here
			}
			dest.Addrs = append(dest.Addrs, net.JoinHostPort(target, strconv.Itoa(int(rec.Port))))
		}
		if len(dest.Addrs) > 0 {
			return dest
		}
	}
	dest.Addrs = []string{net.JoinHostPort(host, strconv.Itoa(DefaultFederationPort))}
	return dest
}

// delegation returns the m.server of host's .well-known, or "" if there is
// none, from the cache when it is fresh.
func (r *Resolver) delegation(ctx context.Context, host string) (string, time.Time) {
	now := r.now()
	old, cached := r.wkCache.Get(host)
	if cached && now.Before(old.expires) {
		return old.delegated, old.expires
	}
	delegated, ttl, err := r.fetchWellKnown(ctx, host)
	entry := wellKnownEntry{delegated: delegated, expires: now.Add(ttl)}
	if delegated != "" {
		entry.grace = entry.expires.Add(wellKnownGrace)
	}
	var netErr *wellKnownNetError
	if errors.As(err, &netErr) && cached && old.delegated != "" && now.Before(old.grace) {
		// The delegating host is unreachable for now: keep the delegation
		// a little longer rather than sending requests elsewhere.
		entry = wellKnownEntry{delegated: old.delegated, expires: now.Add(wellKnownMinTTL), grace: old.grace}
	}
	r.wkCache.Put(host, entry)
	return entry.delegated, entry.expires
}

// wellKnownNetError marks a .well-known fetch that failed before any answer.
type wellKnownNetError struct{ err error }

func (e *wellKnownNetError) Error() string { return e.err.Error() }
func (e *wellKnownNetError) Unwrap() error { return e.err }

// fetchWellKnown fetches and validates the delegation. It returns the
// delegated server name ("" if there is no valid one) and how long to cache
// the answer.
func (r *Resolver) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", wellKnownErrorTTL, err
	}
	resp, err := r.wellKnown.Do(req)
	if err != nil {
		return "", wellKnownErrorTTL, &wellKnownNetError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", wellKnownErrorTTL, fmt.Errorf("well-known: status %d", resp.StatusCode)
	}
	// The spec asks to parse the body as JSON whatever its Content-Type.
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBytes+1))
	if err != nil {
		return "", wellKnownErrorTTL, &wellKnownNetError{err}
	}
	if len(body) > wellKnownMaxBytes {
		return "", wellKnownErrorTTL, errors.New("well-known: body too large")
	}
	var doc struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", wellKnownErrorTTL, fmt.Errorf("well-known: %w", err)
	}
	if _, _, err := splitServerName(doc.Server); err != nil {
		return "", wellKnownErrorTTL, fmt.Errorf("well-known: m.server: %w", err)
	}
	return doc.Server, cacheTTL(resp.Header, r.now()), nil
}

// cacheTTL reads Cache-Control (max-age, no-store, no-cache) and Expires, as
// RFC 9111 orders them, and bounds the result.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl, found := wellKnownDefaultTTL, false
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return wellKnownMinTTL
		case "max-age":
			if secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && secs >= 0 {
				ttl, found = time.Duration(min(secs, int64(wellKnownMaxTTL/time.Second)))*time.Second, true
			}
		}
	}
	if !found {
		if exp, err := http.ParseTime(h.Get("Expires")); err == nil {
			ttl = exp.Sub(now)
		}
	}
	return min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL)
}

// unbracket removes the brackets of an IPv6 literal.
func unbracket(host string) string {
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// splitServerName validates a server name against the spec's grammar and
// splits it into host (IPv6 literals keep their brackets) and port (-1 when
// absent).
func splitServerName(name string) (host string, port int, err error) {
	host, port, ok := spec.ParseAndValidateServerName(spec.ServerName(name))
	if !ok || (port == 0 && strings.HasSuffix(name, ":0")) {
		return "", 0, fmt.Errorf("%q is not a valid server name", name)
	}
	return host, port, nil
}
