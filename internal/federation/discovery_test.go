package federation

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync"
	"testing"
	"time"
)

// discoveryFixture is a resolver whose .well-known requests reach a local
// TLS server (its certificate covers example.com and *.example.com) and
// whose SRV records come from a table.
type discoveryFixture struct {
	r *Resolver

	mu        sync.Mutex
	wellKnown map[string]func(w http.ResponseWriter) // host → answer; absent: connection refused
	hits      map[string]int                         // host → .well-known requests served
	srv       map[string][]*net.SRV                  // "_service._proto.name" → records
	srvCalls  []string
	now       time.Time
}

func newDiscoveryFixture(t *testing.T, static map[string]string) *discoveryFixture {
	t.Helper()
	fx := &discoveryFixture{
		wellKnown: map[string]func(http.ResponseWriter){},
		hits:      map[string]int{},
		srv:       map[string][]*net.SRV{},
		now:       time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		host := req.Host
		fx.mu.Lock()
		answer := fx.wellKnown[host]
		fx.hits[host]++
		fx.mu.Unlock()
		if req.URL.Path != "/.well-known/matrix/server" || answer == nil {
			http.NotFound(w, req)
			return
		}
		answer(w)
	}))
	t.Cleanup(ts.Close)
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	client := WebClient(AddrPolicy{AllowPrivate: true}, roots, 5*time.Second)
	// A tiny DNS: the hosts that have a .well-known answer resolve to the
	// test server, the others refuse connections.
	tr := client.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		fx.mu.Lock()
		_, ok := fx.wellKnown[host]
		fx.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("dial %s: connection refused", addr)
		}
		return dial(ctx, network, ts.Listener.Addr().String())
	}
	lookup := func(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
		key := "_" + service + "._" + proto + "." + name
		fx.mu.Lock()
		defer fx.mu.Unlock()
		fx.srvCalls = append(fx.srvCalls, key)
		if recs, ok := fx.srv[key]; ok {
			return "", recs, nil
		}
		return "", nil, &net.DNSError{Err: "no such host", Name: key, IsNotFound: true}
	}
	fx.r = NewResolver(static, lookup, client)
	fx.r.now = func() time.Time {
		fx.mu.Lock()
		defer fx.mu.Unlock()
		return fx.now
	}
	return fx
}

func (fx *discoveryFixture) advance(d time.Duration) {
	fx.mu.Lock()
	fx.now = fx.now.Add(d)
	fx.mu.Unlock()
}

func (fx *discoveryFixture) serve(host, body string, header ...string) {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	fx.wellKnown[host] = func(w http.ResponseWriter) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		_, _ = w.Write([]byte(body))
	}
}

func (fx *discoveryFixture) resolve(t *testing.T, name string) Destination {
	t.Helper()
	d, err := fx.r.Resolve(context.Background(), name)
	if err != nil {
		t.Fatalf("resolve %s: %v", name, err)
	}
	return *d
}

func (fx *discoveryFixture) wellKnownHits(host string) int {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return fx.hits[host]
}

func dest(host, tlsName string, addrs ...string) Destination {
	return Destination{Addrs: addrs, Host: host, TLSServerName: tlsName}
}

func TestResolveWithoutLookups(t *testing.T) {
	fx := newDiscoveryFixture(t, map[string]string{"hs1": "127.0.0.1:4242", "a.example.com": "127.0.0.1:4343"})
	fx.serve("a.example.com", `{"m.server":"b.example.com:1"}`)
	for _, tc := range []struct {
		name string
		want Destination
	}{
		// Step 1: IP literals, with the port or 8448.
		{"1.2.3.4", dest("1.2.3.4", "1.2.3.4", "1.2.3.4:8448")},
		{"1.2.3.4:1234", dest("1.2.3.4:1234", "1.2.3.4", "1.2.3.4:1234")},
		{"[2001:db8::1]", dest("[2001:db8::1]", "2001:db8::1", "[2001:db8::1]:8448")},
		{"[2001:db8::1]:443", dest("[2001:db8::1]:443", "2001:db8::1", "[2001:db8::1]:443")},
		// Step 2: a host name with an explicit port.
		{"matrix.example.org:8449", dest("matrix.example.org:8449", "matrix.example.org", "matrix.example.org:8449")},
		// federation.resolve comes before everything, even a delegation.
		{"hs1", dest("hs1", "hs1", "127.0.0.1:4242")},
		{"a.example.com", dest("a.example.com", "a.example.com", "127.0.0.1:4343")},
	} {
		if got := fx.resolve(t, tc.name); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if len(fx.srvCalls) != 0 || fx.wellKnownHits("a.example.com") != 0 {
		t.Errorf("lookups made: SRV %v, well-known %d", fx.srvCalls, fx.wellKnownHits("a.example.com"))
	}
	for _, bad := range []string{"", "bad name", "::1", "host:port", "host:0", "[::1"} {
		if _, err := fx.r.Resolve(context.Background(), bad); err == nil {
			t.Errorf("%q resolved", bad)
		}
	}
}

func TestResolveWellKnown(t *testing.T) {
	fx := newDiscoveryFixture(t, nil)
	fx.serve("port.example.com", `{"m.server":"delegated.example.net:9000"}`, "Cache-Control", "max-age=3600")
	fx.serve("ip.example.com", `{"m.server":"10.1.2.3"}`, "Content-Type", "text/plain")
	fx.serve("ipport.example.com", `{"m.server":"[2001:db8::5]:8000"}`)
	fx.serve("srv.example.com", `{"m.server":"delegated.example.net"}`)
	fx.serve("oldsrv.example.com", `{"m.server":"legacy.example.net"}`)
	fx.serve("nosrv.example.com", `{"m.server":"plain.example.net"}`)
	fx.srv["_matrix-fed._tcp.delegated.example.net"] = []*net.SRV{{Target: "fed1.example.net.", Port: 8443}, {Target: "fed2.example.net.", Port: 8444}}
	fx.srv["_matrix._tcp.delegated.example.net"] = []*net.SRV{{Target: "ignored.example.net.", Port: 1}}
	fx.srv["_matrix._tcp.legacy.example.net"] = []*net.SRV{{Target: "old.example.net.", Port: 7000}}

	for _, tc := range []struct {
		name string
		want Destination
	}{
		// 3.2: delegated name with a port: Host is the delegated name.
		{"port.example.com", dest("delegated.example.net:9000", "delegated.example.net", "delegated.example.net:9000")},
		// 3.1: delegated IP literal (the body is JSON whatever its type).
		{"ip.example.com", dest("10.1.2.3", "10.1.2.3", "10.1.2.3:8448")},
		{"ipport.example.com", dest("[2001:db8::5]:8000", "2001:db8::5", "[2001:db8::5]:8000")},
		// 3.3: SRV _matrix-fed._tcp of the delegated name; the certificate
		// is checked against the delegated name, not the SRV target.
		{"srv.example.com", dest("delegated.example.net", "delegated.example.net", "fed1.example.net:8443", "fed2.example.net:8444")},
		// 3.4: the deprecated _matrix._tcp.
		{"oldsrv.example.com", dest("legacy.example.net", "legacy.example.net", "old.example.net:7000")},
		// 3.5: no SRV: port 8448 of the delegated name.
		{"nosrv.example.com", dest("plain.example.net", "plain.example.net", "plain.example.net:8448")},
	} {
		if got := fx.resolve(t, tc.name); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}

	// The delegation is cached for max-age; the whole answer for a few
	// minutes.
	fx.resolve(t, "port.example.com")
	fx.advance(30 * time.Minute)
	fx.resolve(t, "port.example.com")
	if n := fx.wellKnownHits("port.example.com"); n != 1 {
		t.Fatalf("%d .well-known requests within max-age", n)
	}
	fx.advance(31 * time.Minute)
	fx.serve("port.example.com", `{"m.server":"moved.example.net:9001"}`)
	if got := fx.resolve(t, "port.example.com"); got.Host != "moved.example.net:9001" || fx.wellKnownHits("port.example.com") != 2 {
		t.Fatalf("after max-age: %+v, %d requests", got, fx.wellKnownHits("port.example.com"))
	}
}

func TestResolveWithoutWellKnown(t *testing.T) {
	fx := newDiscoveryFixture(t, nil)
	fx.srv["_matrix-fed._tcp.fed.example.com"] = []*net.SRV{{Target: "host.example.net.", Port: 8443}}
	fx.srv["_matrix._tcp.legacy.example.com"] = []*net.SRV{{Target: "old.example.net.", Port: 7000}}
	fx.srv["_matrix-fed._tcp.dot.example.com"] = []*net.SRV{{Target: ".", Port: 0}}
	fx.serve("bad.example.com", `{"m.server":"not a server name!"}`)
	fx.serve("notjson.example.com", `<html>`)
	fx.serve("empty.example.com", `{}`)

	for _, tc := range []struct {
		name string
		want Destination
	}{
		// 4: no .well-known (connection refused): SRV of the server name.
		{"fed.example.com", dest("fed.example.com", "fed.example.com", "host.example.net:8443")},
		// 5: the deprecated _matrix._tcp.
		{"legacy.example.com", dest("legacy.example.com", "legacy.example.com", "old.example.net:7000")},
		// 6: neither: port 8448. A "." SRV target offers nothing.
		{"none.example.com", dest("none.example.com", "none.example.com", "none.example.com:8448")},
		{"dot.example.com", dest("dot.example.com", "dot.example.com", "dot.example.com:8448")},
		// An invalid .well-known counts as none.
		{"bad.example.com", dest("bad.example.com", "bad.example.com", "bad.example.com:8448")},
		{"notjson.example.com", dest("notjson.example.com", "notjson.example.com", "notjson.example.com:8448")},
		{"empty.example.com", dest("empty.example.com", "empty.example.com", "empty.example.com:8448")},
	} {
		if got := fx.resolve(t, tc.name); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}

	// A 404 is cached for an hour.
	fx.mu.Lock()
	fx.wellKnown["missing.example.com"] = nil // reachable, answers 404
	fx.mu.Unlock()
	fx.resolve(t, "missing.example.com")
	fx.advance(50 * time.Minute)
	fx.resolve(t, "missing.example.com")
	if n := fx.wellKnownHits("missing.example.com"); n != 1 {
		t.Fatalf("%d .well-known requests within the error cache time", n)
	}
	fx.advance(11 * time.Minute)
	fx.resolve(t, "missing.example.com")
	if n := fx.wellKnownHits("missing.example.com"); n != 2 {
		t.Fatalf("%d .well-known requests after the error cache time", n)
	}
}

func TestResolveKeepsDelegationWhileUnreachable(t *testing.T) {
	fx := newDiscoveryFixture(t, nil)
	fx.serve("a.example.com", `{"m.server":"b.example.net:1"}`, "Cache-Control", "max-age=600")
	fx.resolve(t, "a.example.com")
	fx.mu.Lock()
	delete(fx.wellKnown, "a.example.com") // now unreachable
	fx.mu.Unlock()
	fx.r.wellKnown.CloseIdleConnections()
	fx.advance(11 * time.Minute)
	if got := fx.resolve(t, "a.example.com"); got.Host != "b.example.net:1" {
		t.Fatalf("delegation dropped while its host is unreachable: %+v", got)
	}
	fx.advance(time.Hour)
	if got := fx.resolve(t, "a.example.com"); got.Host != "a.example.com" {
		t.Fatalf("delegation kept past its grace period: %+v", got)
	}
}

func TestCacheTTL(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		header []string
		want   time.Duration
	}{
		{nil, 24 * time.Hour},
		{[]string{"Cache-Control", "public, max-age=7200"}, 2 * time.Hour},
		{[]string{"Cache-Control", "max-age=\"60\""}, 5 * time.Minute},
		{[]string{"Cache-Control", "max-age=999999999"}, 48 * time.Hour},
		{[]string{"Cache-Control", "no-store"}, 5 * time.Minute},
		{[]string{"Cache-Control", "max-age=bogus"}, 24 * time.Hour},
		{[]string{"Expires", now.Add(3 * time.Hour).Format(http.TimeFormat)}, 3 * time.Hour},
		{[]string{"Expires", "yesterday"}, 24 * time.Hour},
		{[]string{"Expires", now.Add(3 * time.Hour).Format(http.TimeFormat), "Cache-Control", "max-age=3600"}, time.Hour},
	} {
		h := http.Header{}
		for i := 0; i+1 < len(tc.header); i += 2 {
			h.Set(tc.header[i], tc.header[i+1])
		}
		if got := cacheTTL(h, now); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.header, got, tc.want)
		}
	}
}
