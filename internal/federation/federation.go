package federation

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Federation is the transport layer of the server-server API: the server's
// published keys, the key ring, server discovery, the signing HTTP client and
// the authentication of inbound federation requests. The room-level
// federation (transactions, joins, backfill …) is built on it: it sends with
// Client, checks signatures with KeyRing and registers its endpoints with
// Handle.
type Federation struct {
	// Client makes signed requests to other servers.
	Client *Client
	// KeyRing holds other servers' keys.
	KeyRing *KeyRing
	// Resolver finds other servers (server discovery).
	Resolver *Resolver
	// Policy is the outbound address policy (SSRF protection); Policy.Dialer
	// serves any other outbound connection to addresses chosen by others
	// (remote media, URL previews).
	Policy AddrPolicy
	// Version is the software version reported by /federation/v1/version.
	Version string

	serverName string
	db         *db.DB
	own        *ownKeys
	router     *httpx.Router
	now        func() time.Time
}

// New builds the federation layer from the configuration: the old keys of
// data_dir/old_signing_keys, federation.resolve, federation.ca_file,
// federation.allow_private and federation.trusted_key_servers.
func New(cfg *config.Config, d *db.DB, key *SigningKey) (*Federation, error) {
	old, err := LoadOldVerifyKeys(filepath.Join(cfg.DataDir, OldKeysFile))
	if err != nil {
		return nil, fmt.Errorf("old signing keys: %w", err)
	}
	static, err := cfg.ResolveMap()
	if err != nil {
		return nil, fmt.Errorf("federation.resolve: %w", err)
	}
	trusted, err := cfg.TrustedKeyServers()
	if err != nil {
		return nil, fmt.Errorf("federation.trusted_key_servers: %w", err)
	}
	roots, err := tlsRoots(cfg.Federation.CAFile)
	if err != nil {
		return nil, err
	}
	f := &Federation{
		Policy:     AddrPolicy{AllowPrivate: cfg.Federation.AllowPrivate},
		Version:    buildVersion(),
		serverName: cfg.ServerName,
		db:         d,
		now:        time.Now,
	}
	f.own = &ownKeys{serverName: cfg.ServerName, key: key, old: old, now: time.Now}
	f.Resolver = NewResolver(static, nil, WebClient(f.Policy, roots, 15*time.Second))
	f.Client = NewClient(cfg.ServerName, key, f.Resolver, f.Policy, roots)
	notaries := make([]Notary, 0, len(trusted))
	for _, t := range trusted {
		n := Notary{ServerName: t.ServerName, Keys: map[string]ed25519.PublicKey{}}
		for id, pub := range t.Keys {
			n.Keys[id] = ed25519.PublicKey(pub)
		}
		notaries = append(notaries, n)
	}
	f.KeyRing = NewKeyRing(cfg.ServerName, f.own.verifyKeys(), d, f.Client, notaries)
	return f, nil
}

// Routes registers the public key and version endpoints and remembers the
// router for Handle.
func (f *Federation) Routes(rt *httpx.Router) {
	f.router = rt
	rt.Public("GET /_matrix/key/v2/server", func(r *http.Request) (any, error) {
		raw, err := f.own.response()
		if err != nil {
			return nil, err
		}
		return json.RawMessage(raw), nil
	})
	rt.Public("GET /_matrix/key/v2/query/{serverName}", f.handleKeyQuery)
	rt.Public("POST /_matrix/key/v2/query", f.handleKeyQueryBatch)
	rt.Public("GET /_matrix/federation/v1/version", func(r *http.Request) (any, error) {
		return map[string]any{"server": map[string]string{"name": "Palpo", "version": f.Version}}, nil
	})
}

// Handle registers an authenticated federation endpoint (pattern in
// net/http ServeMux syntax, e.g. "PUT /_matrix/federation/v1/send/{txnId}").
// Requests that fail X-Matrix authentication are answered 401
// M_UNAUTHORIZED before h runs. Routes must have been called.
func (f *Federation) Handle(pattern string, h Handler) {
	if f.router == nil {
		panic(errors.New("federation: Handle called before Routes"))
	}
	f.router.Signed(pattern, 0, f.authenticated(h))
}

// ServerName is the name of this server.
func (f *Federation) ServerName() string { return f.serverName }

// buildVersion is the module version Palpo was built as, or "dev".
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
