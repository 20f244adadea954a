// Package config defines Palpo's configuration: the YAML file format, the
// defaults that make a zero-configuration start work, the PALPO_* environment
// overrides and validation.
//
// Every option is a field of Config with a `yaml` tag and a `doc` tag. The
// environment variable of an option is PALPO_ followed by its YAML path in
// upper case joined by underscores (federation.listen → PALPO_FEDERATION_LISTEN),
// unless the field carries an explicit `env` tag. The commented sample file
// printed by `palpo generate-config` is generated from the same tags, so the
// documentation cannot drift from the code.
package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Registration modes.
const (
	RegistrationClosed = "closed"
	RegistrationToken  = "token"
	RegistrationOpen   = "open"
)

// Config is the whole server configuration.
type Config struct {
	ServerName string `yaml:"server_name" doc:"The Matrix server name: the part after the colon in @user:server. It cannot be changed once users exist."`
	Listen     string `yaml:"listen" doc:"host:port of the plain HTTP listener that serves the client API, the federation API and /health."`
	DataDir    string `yaml:"data_dir" doc:"Directory for the SQLite database, the signing key and media."`
	LogLevel   string `yaml:"log_level" doc:"debug, info, warn or error."`
	LogFormat  string `yaml:"log_format" doc:"text or json."`

	PublicBaseURL string `yaml:"public_base_url" doc:"The URL clients use to reach this server (https://matrix.example.org/). Used for /.well-known/matrix/client. Empty: derived from server_name."`

	Database DatabaseConfig `yaml:"database"`

	Registration             string `yaml:"registration" env:"PALPO_REGISTRATION" doc:"closed (only admins and registration tokens made with the CLI), token (m.login.registration_token), or open (m.login.dummy: anyone may register)."`
	RegistrationSharedSecret string `yaml:"registration_shared_secret" env:"PALPO_REGISTRATION_SHARED_SECRET" doc:"Secret for Synapse-compatible shared-secret registration at /_synapse/admin/v1/register. Empty disables it."`
	AllowGuests              bool   `yaml:"allow_guests" doc:"Allow guest registration (kind=guest)."`
	Presence                 bool   `yaml:"presence" doc:"Track and share presence (online, unavailable, offline) between users who share a room."`

	RateLimit     string          `yaml:"rate_limit" env:"PALPO_RATE_LIMIT" doc:"on or off: rate limiting of login, registration and message sends."`
	RateLimits    RateLimitConfig `yaml:"rate_limits"`
	MaxBodyBytes  int64           `yaml:"max_body_bytes" doc:"Largest request body accepted by JSON endpoints, in bytes (media uploads have their own limit)."`
	TokenLifetime time.Duration   `yaml:"access_token_lifetime" doc:"Lifetime of access tokens issued with a refresh token (clients that ask for refresh_token: true). 0: such tokens do not expire."`

	TLSCert string `yaml:"tls_cert" env:"PALPO_TLS_CERT" doc:"PEM certificate chain for the TLS federation listener."`
	TLSKey  string `yaml:"tls_key" env:"PALPO_TLS_KEY" doc:"PEM private key for the TLS federation listener."`

	Federation FederationConfig `yaml:"federation"`
	WellKnown  WellKnownConfig  `yaml:"well_known"`
	Metrics    MetricsConfig    `yaml:"metrics"`
	Push       PushConfig       `yaml:"push"`
	Media      MediaConfig      `yaml:"media"`
}

// DatabaseConfig selects and tunes the database.
type DatabaseConfig struct {
	URL               string `yaml:"url" env:"PALPO_DATABASE_URL" doc:"Empty: SQLite in data_dir/palpo.db. postgres://user@host/db: PostgreSQL."`
	SQLiteSynchronous string `yaml:"sqlite_synchronous" doc:"SQLite synchronous mode: full (every acknowledged write survives a power cut) or normal (survives a crash of palpo, may lose the last writes on power loss; faster)."`
	MaxOpenConns      int    `yaml:"max_open_conns" doc:"PostgreSQL pool size; SQLite readers."`
}

// RateLimitConfig holds the token-bucket parameters per action.
type RateLimitConfig struct {
	LoginPerSecond    float64 `yaml:"login_per_second" doc:"Sustained login attempts per second per IP address and per user."`
	LoginBurst        int     `yaml:"login_burst" doc:"Login attempts allowed in a burst."`
	RegisterPerSecond float64 `yaml:"register_per_second" doc:"Sustained registrations per second per IP address."`
	RegisterBurst     int     `yaml:"register_burst" doc:"Registrations allowed in a burst."`
	SendPerSecond     float64 `yaml:"send_per_second" doc:"Sustained message sends per second per user."`
	SendBurst         int     `yaml:"send_burst" doc:"Message sends allowed in a burst."`
}

// FederationConfig configures the server-server API.
type FederationConfig struct {
	Listen       string `yaml:"listen" doc:"host:port of the TLS federation listener (needs tls_cert and tls_key). Empty: no TLS listener; federation is served on listen (behind a reverse proxy)."`
	CAFile       string `yaml:"ca_file" doc:"PEM file of extra root certificates trusted for outbound federation (test networks)."`
	Resolve      string `yaml:"resolve" doc:"Comma-separated name=host:port overrides of server discovery, e.g. hs1=127.0.0.1:8448."`
	AllowPrivate bool   `yaml:"allow_private" doc:"Allow outbound federation to loopback, private and link-local addresses."`

	TrustedKeyServers string `yaml:"trusted_key_servers" doc:"Comma-separated notary servers asked for the signing keys of servers that cannot be reached directly: name, or name=ed25519:<version>:<base64 key> to pin the notary's key. Empty: keys are only fetched directly."`
}

// WellKnownConfig controls the /.well-known/matrix documents.
type WellKnownConfig struct {
	Client string `yaml:"client" doc:"m.homeserver base_url served at /.well-known/matrix/client. Empty: public_base_url."`
	Server string `yaml:"server" doc:"m.server delegation served at /.well-known/matrix/server (host:port). Empty: not served (404)."`
}

// MetricsConfig controls the Prometheus endpoint.
type MetricsConfig struct {
	Enabled bool `yaml:"enabled" doc:"Serve Prometheus metrics at /metrics on the main listener."`
}

// Default returns the zero-configuration defaults.
func Default() *Config {
	return &Config{
		ServerName:   "localhost",
		Listen:       "127.0.0.1:8008",
		DataDir:      "./palpo-data",
		LogLevel:     "info",
		LogFormat:    "text",
		Registration: RegistrationClosed,
		Presence:     true,
		RateLimit:    "on",
		RateLimits: RateLimitConfig{
			LoginPerSecond: 0.2, LoginBurst: 5,
			RegisterPerSecond: 0.2, RegisterBurst: 5,
			SendPerSecond: 10, SendBurst: 50,
		},
		MaxBodyBytes: 1 << 20,
		Database: DatabaseConfig{
			SQLiteSynchronous: "full",
			MaxOpenConns:      8,
		},
		Media: defaultMedia(),
	}
}

// Load builds the configuration: defaults, then the YAML file (if path is not
// empty), then the environment. It validates the result.
func Load(path string, environ []string) (*Config, error) {
	cfg := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && err.Error() != "EOF" {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := applyEnv(cfg, environ); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Validate checks every option and returns an error naming the first bad one.
func (c *Config) Validate() error {
	bad := func(opt, format string, args ...any) error {
		return fmt.Errorf("config: %s: %s", opt, fmt.Sprintf(format, args...))
	}
	if err := ValidateServerName(c.ServerName); err != nil {
		return bad("server_name", "%v", err)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen", "%q is not host:port", c.Listen)
	}
	if c.DataDir == "" {
		return bad("data_dir", "must not be empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return bad("log_format", "%q is not text or json", c.LogFormat)
	}
	switch c.Registration {
	case RegistrationClosed, RegistrationToken, RegistrationOpen:
	default:
		return bad("registration", "%q is not one of closed, token, open", c.Registration)
	}
	switch c.RateLimit {
	case "on", "off":
	default:
		return bad("rate_limit", "%q is not on or off", c.RateLimit)
	}
	if c.MaxBodyBytes < 1024 {
		return bad("max_body_bytes", "%d is too small (at least 1024)", c.MaxBodyBytes)
	}
	if u := c.Database.URL; u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") {
		return bad("database.url", "must be empty (SQLite) or a postgres:// URL")
	}
	switch c.Database.SQLiteSynchronous {
	case "full", "normal":
	default:
		return bad("database.sqlite_synchronous", "%q is not full or normal", c.Database.SQLiteSynchronous)
	}
	if c.Database.MaxOpenConns < 1 {
		return bad("database.max_open_conns", "must be at least 1")
	}
	if c.PublicBaseURL != "" {
		if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("public_base_url", "%q is not an http(s) URL", c.PublicBaseURL)
		}
	}
	if c.Federation.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Federation.Listen); err != nil {
			return bad("federation.listen", "%q is not host:port", c.Federation.Listen)
		}
		if c.TLSCert == "" || c.TLSKey == "" {
			return bad("federation.listen", "needs tls_cert and tls_key")
		}
	}
	for _, f := range []struct{ opt, path string }{{"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey}, {"federation.ca_file", c.Federation.CAFile}} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				return bad(f.opt, "%v", err)
			}
		}
	}
	if _, err := c.ResolveMap(); err != nil {
		return bad("federation.resolve", "%v", err)
	}
	if _, err := c.TrustedKeyServers(); err != nil {
		return bad("federation.trusted_key_servers", "%v", err)
	}
	if err := c.Media.validate(); err != nil {
		return err
	}
	return nil
}

// ResolveMap parses Federation.Resolve into server name → host:port.
func (c *Config) ResolveMap() (map[string]string, error) {
	m := map[string]string{}
	for _, part := range strings.Split(c.Federation.Resolve, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, addr, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("%q is not name=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%q is not name=host:port", part)
		}
		m[name] = addr
	}
	return m, nil
}

// BaseURL is the URL clients use to reach this server.
func (c *Config) BaseURL() string {
	if c.PublicBaseURL != "" {
		return strings.TrimSuffix(c.PublicBaseURL, "/") + "/"
	}
	if c.ServerName == "localhost" || strings.HasPrefix(c.ServerName, "localhost:") {
		return "http://" + c.Listen + "/"
	}
	return "https://" + c.ServerName + "/"
}

// DatabasePath is the SQLite file used when no database URL is configured.
func (c *Config) DatabasePath() string { return filepath.Join(c.DataDir, "palpo.db") }

// SigningKeyPath is where the server's ed25519 signing key lives.
func (c *Config) SigningKeyPath() string { return filepath.Join(c.DataDir, "signing.key") }

// RateLimitEnabled reports whether rate limiting is on.
func (c *Config) RateLimitEnabled() bool { return c.RateLimit == "on" }

// ValidateServerName checks the grammar of a Matrix server name:
// hostname or IP literal, optionally followed by :port.
func ValidateServerName(name string) error {
	if name == "" {
		return fmt.Errorf("must not be empty")
	}
	host := name
	if strings.HasPrefix(name, "[") {
		end := strings.Index(name, "]")
		if end < 0 {
			return fmt.Errorf("%q: unterminated IPv6 literal", name)
		}
		if net.ParseIP(name[1:end]) == nil {
			return fmt.Errorf("%q: bad IPv6 literal", name)
		}
		host, name = "", name[end+1:]
		if name != "" && !strings.HasPrefix(name, ":") {
			return fmt.Errorf("%q: junk after IPv6 literal", name)
		}
	} else if i := strings.LastIndexByte(name, ':'); i >= 0 {
		host, name = name[:i], name[i:]
	} else {
		name = ""
	}
	if name != "" {
		port := name[1:]
		if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return fmt.Errorf("bad port %q", port)
		}
	}
	if host == "" {
		return nil
	}
	if len(host) > 255 {
		return fmt.Errorf("host name too long")
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("%q has a character not allowed in a host name: %q", host, r)
		}
	}
	return nil
}
