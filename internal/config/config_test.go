package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	cfg, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "localhost" || cfg.Listen != "127.0.0.1:8008" || cfg.DataDir != "./palpo-data" || cfg.Registration != "closed" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	cfg, err := Load("", []string{
		"PALPO_SERVER_NAME=example.org",
		"PALPO_LISTEN=0.0.0.0:9000",
		"PALPO_DATA_DIR=/tmp/x",
		"PALPO_DATABASE_URL=postgres://u@h/db",
		"PALPO_REGISTRATION=open",
		"PALPO_REGISTRATION_SHARED_SECRET=s3cret",
		"PALPO_RATE_LIMIT=off",
		"PALPO_LOG_LEVEL=debug",
		"PALPO_FEDERATION_RESOLVE=hs1=127.0.0.1:1,hs2=127.0.0.1:2",
		"PALPO_FEDERATION_ALLOW_PRIVATE=true",
		"PALPO_METRICS_ENABLED=true",
		"PALPO_RATE_LIMITS_SEND_BURST=7",
		"PALPO_ACCESS_TOKEN_LIFETIME=5m",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"server": cfg.ServerName, "listen": cfg.Listen, "dir": cfg.DataDir, "db": cfg.Database.URL,
		"reg": cfg.Registration, "secret": cfg.RegistrationSharedSecret, "rl": cfg.RateLimitEnabled(),
		"log": cfg.LogLevel, "private": cfg.Federation.AllowPrivate, "metrics": cfg.Metrics.Enabled,
		"burst": cfg.RateLimits.SendBurst, "ttl": cfg.TokenLifetime,
	}
	got := map[string]any{
		"server": "example.org", "listen": "0.0.0.0:9000", "dir": "/tmp/x", "db": "postgres://u@h/db",
		"reg": "open", "secret": "s3cret", "rl": false, "log": "debug", "private": true, "metrics": true,
		"burst": 7, "ttl": 5 * time.Minute,
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("got %v\nwant %v", want, got)
	}
	m, _ := cfg.ResolveMap()
	if m["hs1"] != "127.0.0.1:1" || m["hs2"] != "127.0.0.1:2" {
		t.Fatalf("resolve map %v", m)
	}
}

func TestInvalidOptionsNameTheOption(t *testing.T) {
	cases := map[string]string{
		"PALPO_SERVER_NAME=bad name":          "server_name",
		"PALPO_SERVER_NAME=host:99999999":     "server_name",
		"PALPO_LISTEN=nonsense":               "listen",
		"PALPO_REGISTRATION=sometimes":        "registration",
		"PALPO_RATE_LIMIT=maybe":              "rate_limit",
		"PALPO_LOG_LEVEL=loud":                "log_level",
		"PALPO_DATABASE_URL=mysql://x":        "database.url",
		"PALPO_FEDERATION_ALLOW_PRIVATE=perh": "federation.allow_private",
		"PALPO_FEDERATION_RESOLVE=hs1":        "federation.resolve",
		"PALPO_FEDERATION_LISTEN=:8448":       "federation.listen",
		"PALPO_MAX_BODY_BYTES=ten":            "max_body_bytes",
		"PALPO_TLS_CERT=/no/such/file":        "tls_cert",
	}
	for env, opt := range cases {
		_, err := Load("", []string{env})
		if err == nil {
			t.Errorf("%s: accepted", env)
			continue
		}
		if !strings.Contains(err.Error(), opt) || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("%s: error %q does not name %s on one line", env, err, opt)
		}
	}
}

func TestSampleParsesBackToDefaults(t *testing.T) {
	sample := Sample()
	for _, o := range options(Default()) {
		if !strings.Contains(sample, "# env: "+o.env+"\n") {
			t.Errorf("sample lacks %s", o.env)
		}
	}
	path := filepath.Join(t.TempDir(), "palpo.yaml")
	if err := os.WriteFile(path, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatalf("sample does not load: %v", err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("sample differs from defaults:\n%+v\n%+v", cfg, Default())
	}
}

func TestFileUnknownKeyRejected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "palpo.yaml")
	if err := os.WriteFile(path, []byte("server_nmae: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "server_nmae") {
		t.Fatalf("unknown key: %v", err)
	}
	if err := os.WriteFile(path, []byte("server_name: example.org\nfederation:\n  allow_private: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, []string{"PALPO_SERVER_NAME=env.example"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "env.example" || !cfg.Federation.AllowPrivate {
		t.Fatalf("file+env: %+v", cfg)
	}
}

func TestValidateServerName(t *testing.T) {
	for _, ok := range []string{"localhost", "example.org", "example.org:8448", "1.2.3.4", "1.2.3.4:80", "[::1]", "[::1]:8448", "127.0.0.1:34567"} {
		if err := ValidateServerName(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "exa mple.org", "example.org:", "example.org:abc", "[::1", "[zz]", "a_b.org", "ex@mple"} {
		if err := ValidateServerName(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
