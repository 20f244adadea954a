package palpodeploy

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-org/complement/config"
)

// TestDeployer checks the deployer itself against a real palpo binary; it
// needs nothing of Palpo beyond /_matrix/client/versions and a TLS
// federation listener. Run it with: tests/complement/run.sh -selftest
func TestDeployer(t *testing.T) {
	if os.Getenv("PALPO_BIN") == "" {
		t.Skip("PALPO_BIN not set")
	}
	cfg := config.NewConfigFromEnvVars("selftest", "palpo-local-processes")
	cfg.SpawnHSTimeout = 10 * time.Second
	dep := Deploy(t, 2, cfg)
	d := dep.(*Deployment)

	if got := dep.GetFullyQualifiedHomeserverName(t, "hs2"); got != "hs2" {
		t.Fatalf("server name of hs2 = %q", got)
	}
	hs1, hs2 := d.servers["hs1"], d.servers["hs2"]
	if hs1.ip == hs2.ip {
		t.Fatalf("hs1 and hs2 share the address %s", hs1.ip)
	}

	// The client API at BaseURL, and the federation listener through the
	// deployment's RoundTripper: TLS, certificate for "hs2" issued by the
	// Complement CA, Host header hs2.
	fed := &http.Client{Transport: dep.RoundTripper(), Timeout: 5 * time.Second}
	get := func(c *http.Client, url string) error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
		}
		if resp.TLS != nil && resp.TLS.PeerCertificates[0].DNSNames[0] != "hs2" {
			t.Errorf("GET %s: certificate for %v", url, resp.TLS.PeerCertificates[0].DNSNames)
		}
		return nil
	}
	if err := get(http.DefaultClient, hs1.baseURL()+"/_matrix/client/versions"); err != nil {
		t.Fatal(err)
	}
	if err := get(fed, "https://hs2/_matrix/client/versions"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hs1", "hs2"} {
		env := d.servers[name].env
		want := map[string]bool{
			"PALPO_SERVER_NAME=" + name:                                               true,
			"PALPO_REGISTRATION=open":                                                 true,
			"PALPO_REGISTRATION_SHARED_SECRET=complement":                             true,
			"PALPO_FEDERATION_RESOLVE=hs1=" + hs1.fedAddr() + ",hs2=" + hs2.fedAddr(): true,
		}
		for _, kv := range env {
			delete(want, kv)
		}
		if len(want) > 0 {
			t.Errorf("%s environment lacks %v", name, want)
		}
	}

	// Pause: the server stops answering; Unpause: it answers again.
	dep.PauseServer(t, "hs1")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", hs1.baseURL()+"/_matrix/client/versions", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("paused hs1 answered HTTP %d", resp.StatusCode)
	}
	cancel()
	dep.UnpauseServer(t, "hs1")
	if err := get(http.DefaultClient, hs1.baseURL()+"/_matrix/client/versions"); err != nil {
		t.Fatalf("after unpause: %v", err)
	}

	// Stop/Start keep the addresses and the data directory.
	marker := filepath.Join(hs2.dir, "data", "selftest-marker")
	os.WriteFile(marker, []byte("x"), 0o644)
	dep.StopServer(t, "hs2")
	if hs2.running() {
		t.Fatal("hs2 still running after StopServer")
	}
	if _, err := fed.Get("https://hs2/_matrix/client/versions"); err == nil {
		t.Error("stopped hs2 answered")
	}
	dep.StartServer(t, "hs2")
	if err := get(fed, "https://hs2/_matrix/client/versions"); err != nil {
		t.Fatalf("after StartServer: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("data directory lost across stop/start: %v", err)
	}

	// Restart: a paused server too.
	dep.PauseServer(t, "hs1")
	if err := dep.Restart(t); err != nil {
		t.Fatal(err)
	}
	if err := get(http.DefaultClient, hs1.baseURL()+"/_matrix/client/versions"); err != nil {
		t.Fatalf("after Restart: %v", err)
	}

	// Destroy removes everything and the processes are gone.
	dep.Destroy(t)
	if hs1.running() || hs2.running() {
		t.Error("servers still running after Destroy")
	}
	if _, err := os.Stat(d.dir); !os.IsNotExist(err) {
		t.Errorf("deployment directory %s still there: %v", d.dir, err)
	}
}
