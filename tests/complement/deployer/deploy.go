// Package palpodeploy runs Complement's tests against Palpo processes started on
// loopback addresses instead of Docker containers.
//
// It is compiled inside a scratch copy of Complement (as
// github.com/matrix-org/complement/palpodeploy) by the runner in
// tests/complement/runner, which rewrites every test package's TestMain to
//
//	complement.TestMain(m, "ns",
//		complement.WithDeployment(palpodeploy.Deploy),
//		complement.WithCleanup(palpodeploy.Cleanup))
//
// Each homeserver hsN is one `palpo serve` process with its own data
// directory, its own loopback address 127.a.b.c, a plain HTTP listener on port
// 8008 (client API, what BaseURL points at) and a TLS federation listener on
// port 8448 whose certificate is signed by the Complement CA. The servers of a
// deployment find each other through PALPO_FEDERATION_RESOLVE; Complement's
// own federation test servers are named 127.0.0.1:<port> (the runner sets
// COMPLEMENT_HOSTNAME_RUNNING_COMPLEMENT=127.0.0.1), which Palpo reaches
// directly because PALPO_FEDERATION_ALLOW_PRIVATE is on.
//
// Environment read by the deployer (the runner sets all of them):
//
//	PALPO_BIN                   the palpo binary (required)
//	PALPO_COMPLEMENT_WORKDIR    where server directories are created (default: a temp dir)
//	PALPO_COMPLEMENT_LOGDIR     where server logs of failed tests are kept (default: WORKDIR/logs)
//	PALPO_COMPLEMENT_LOG_LEVEL  PALPO_LOG_LEVEL of the servers (default: debug; logs are kept only for failed tests)
//	PALPO_COMPLEMENT_LOG_TAIL   lines of each server log printed into a failed test's output (default: 40)
package palpodeploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/complement"
	"github.com/matrix-org/complement/config"
	"github.com/matrix-org/complement/ct"
)

const (
	clientPort     = 8008
	federationPort = 8448
	// sharedSecret is the registration shared secret Complement's
	// client.RegisterSharedSecret signs with.
	sharedSecret = "complement"
)

func init() {
	// Complement's config panics without a base image, and by default names
	// its own federation servers host.docker.internal:<port>, which does not
	// resolve here. Give both working defaults so that the scratch copy can
	// also be used with a plain `go test` (the runner sets them explicitly).
	setDefaultEnv("COMPLEMENT_BASE_IMAGE", "palpo-local-processes")
	setDefaultEnv("COMPLEMENT_HOSTNAME_RUNNING_COMPLEMENT", "127.0.0.1")

	// Complement's federation test servers write their certificate to the
	// fixed paths $TMPDIR/complement.{crt,key}. Test packages run in
	// parallel, each with its own CA, so give each test binary its own
	// TMPDIR lest one package serve a certificate from another's CA.
	tmp := filepath.Join(workDir(), fmt.Sprintf("tmp-%d", os.Getpid()))
	if err := os.MkdirAll(tmp, 0o755); err == nil {
		privateTmp = tmp
		os.Setenv("TMPDIR", tmp)
	}
}

// privateTmp is this test binary's TMPDIR, removed by Cleanup.
var privateTmp string

func setDefaultEnv(key, value string) {
	if os.Getenv(key) == "" {
		os.Setenv(key, value)
	}
}

var (
	deployCounter atomic.Int64

	liveMu sync.Mutex
	live   = map[*Deployment]struct{}{}
)

// Deploy starts numServers Palpo processes named hs1…hsN and waits until each
// answers GET /_matrix/client/versions. It matches the signature that
// complement.WithDeployment expects.
func Deploy(t ct.TestLike, numServers int, cfg *config.Complement) complement.Deployment {
	t.Helper()
	start := time.Now()
	bin := os.Getenv("PALPO_BIN")
	if bin == "" {
		ct.Fatalf(t, "palpodeploy: PALPO_BIN is not set; run the tests through tests/complement/runner")
	}
	if _, err := os.Stat(bin); err != nil {
		ct.Fatalf(t, "palpodeploy: PALPO_BIN: %s", err)
	}
	if numServers < 1 {
		ct.Fatalf(t, "palpodeploy: asked for %d servers", numServers)
	}
	if cfg.EnableDirtyRuns {
		t.Logf("palpodeploy: COMPLEMENT_ENABLE_DIRTY_RUNS is ignored; every deployment is fresh")
	}

	seq := deployCounter.Add(1)
	name := fmt.Sprintf("%s-%d", cfg.PackageNamespace, seq)
	dir := filepath.Join(workDir(), fmt.Sprintf("%s-%d", cfg.PackageNamespace, os.Getpid()), strconv.FormatInt(seq, 10))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		ct.Fatalf(t, "palpodeploy: %s", err)
	}

	caPEM, err := cfg.CACertificateBytes()
	if err != nil {
		ct.Fatalf(t, "palpodeploy: encoding CA certificate: %s", err)
	}
	caFile := filepath.Join(dir, "complement-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		ct.Fatalf(t, "palpodeploy: %s", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cfg.CACertificate)

	d := &Deployment{
		cfg:     cfg,
		name:    name,
		testDir: testLogName(t.Name()),
		dir:     dir,
		servers: map[string]*server{},
		tokens:  map[string]string{},
		devices: map[string]string{},
	}
	d.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}

	// Addresses first: every server's resolve map names all of them.
	var resolve []string
	for i := 1; i <= numServers; i++ {
		hsName := fmt.Sprintf("hs%d", i)
		ip, cport, fport, err := allocateAddress()
		if err != nil {
			ct.Fatalf(t, "palpodeploy: allocating an address for %s: %s", hsName, err)
		}
		s := &server{
			name:     hsName,
			ip:       ip,
			cport:    cport,
			fport:    fport,
			dir:      filepath.Join(dir, hsName),
			bin:      bin,
			logLevel: envOr("PALPO_COMPLEMENT_LOG_LEVEL", "debug"),
		}
		s.transport = d.transport.Clone()
		s.transport.TLSClientConfig.ServerName = hsName
		d.servers[hsName] = s
		d.order = append(d.order, hsName)
		resolve = append(resolve, fmt.Sprintf("%s=%s", hsName, net.JoinHostPort(ip, strconv.Itoa(fport))))
	}
	for _, hsName := range d.order {
		s := d.servers[hsName]
		if err := os.MkdirAll(filepath.Join(s.dir, "data"), 0o755); err != nil {
			ct.Fatalf(t, "palpodeploy: %s", err)
		}
		if err := writeServerCert(cfg, s); err != nil {
			ct.Fatalf(t, "palpodeploy: certificate for %s: %s", hsName, err)
		}
		s.env = serverEnv(cfg, s, caFile, strings.Join(resolve, ","))
	}

	liveMu.Lock()
	live[d] = struct{}{}
	liveMu.Unlock()
	// A safety net: if the test never calls Destroy (or Deploy fails half
	// way), the processes still go away when the test ends.
	if c, ok := t.(interface{ Cleanup(func()) }); ok {
		c.Cleanup(func() { d.destroy(t) })
	}

	// Start the servers concurrently; each start waits for /versions.
	errs := make([]error, len(d.order))
	var wg sync.WaitGroup
	for i, hsName := range d.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.servers[hsName].start(cfg.SpawnHSTimeout)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			s := d.servers[d.order[i]]
			t.Logf("palpodeploy: %s failed to start: %s\n%s", s.name, err, s.logTail(tailLines()))
			d.destroy(t)
			ct.Fatalf(t, "palpodeploy: Deploy(%d) failed: %s: %s", numServers, s.name, err)
		}
	}
	var where []string
	for _, hsName := range d.order {
		s := d.servers[hsName]
		where = append(where, fmt.Sprintf("%s=%s (federation %s)", hsName, s.baseURL(), s.fedAddr()))
	}
	t.Logf("palpodeploy: deployment %s ready in %v: %s", name, time.Since(start).Round(time.Millisecond), strings.Join(where, ", "))
	return d
}

// Cleanup kills every server still running at the end of a test package. It
// matches the signature complement.WithCleanup expects.
func Cleanup(cfg *config.Complement) {
	liveMu.Lock()
	deps := make([]*Deployment, 0, len(live))
	for d := range live {
		deps = append(deps, d)
	}
	liveMu.Unlock()
	for _, d := range deps {
		d.destroy(nil)
	}
	if privateTmp != "" {
		os.RemoveAll(privateTmp)
	}
}

func workDir() string {
	if d := os.Getenv("PALPO_COMPLEMENT_WORKDIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "palpo-complement")
}

func logDir() string {
	if d := os.Getenv("PALPO_COMPLEMENT_LOGDIR"); d != "" {
		return d
	}
	return filepath.Join(workDir(), "logs")
}

func tailLines() int {
	if n, err := strconv.Atoi(os.Getenv("PALPO_COMPLEMENT_LOG_TAIL")); err == nil && n >= 0 {
		return n
	}
	return 40
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// serverEnv is the whole configuration of one Palpo process.
func serverEnv(cfg *config.Complement, s *server, caFile, resolve string) []string {
	var env []string
	for _, kv := range os.Environ() {
		// Only our own settings reach the server, never the caller's.
		if strings.HasPrefix(kv, "PALPO_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"PALPO_SERVER_NAME="+s.name,
		"PALPO_LISTEN="+s.clientAddr(),
		"PALPO_DATA_DIR="+filepath.Join(s.dir, "data"),
		"PALPO_DATABASE_URL=",
		"PALPO_REGISTRATION=open",
		"PALPO_REGISTRATION_SHARED_SECRET="+sharedSecret,
		"PALPO_RATE_LIMIT=off",
		"PALPO_LOG_LEVEL="+s.logLevel,
		"PALPO_FEDERATION_LISTEN="+s.fedAddr(),
		"PALPO_TLS_CERT="+filepath.Join(s.dir, "tls.crt"),
		"PALPO_TLS_KEY="+filepath.Join(s.dir, "tls.key"),
		"PALPO_FEDERATION_CA_FILE="+caFile,
		"PALPO_FEDERATION_RESOLVE="+resolve,
		"PALPO_FEDERATION_ALLOW_PRIVATE=true",
		// Complement's media tests use the deprecated unauthenticated media
		// endpoints and preview pages it serves on loopback.
		"PALPO_MEDIA_LEGACY_FREEZE=off",
		"PALPO_MEDIA_URL_PREVIEWS=true",
		"PALPO_MEDIA_URL_PREVIEW_ALLOW_RANGES=127.0.0.0/8",
	)
	// COMPLEMENT_SHARE_ENV_PREFIX: FOO_PALPO_X=y on the host becomes
	// PALPO_X=y in the server, after (and so overriding) the settings above.
	if p := cfg.EnvVarsPropagatePrefix; p != "" {
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, p) {
				env = append(env, strings.TrimPrefix(kv, p))
			}
		}
	}
	return env
}

// Address allocation. Every server gets its own loopback address out of
// 127.0.0.0/8 (Linux routes the whole block to lo), so the well-known ports
// 8008 and 8448 can be used as in Complement's containers, and test packages
// running in parallel (separate processes) do not compete for ports: each
// process starts at a random /24 and never reuses an address.
var (
	addrMu   sync.Mutex
	addrNext uint32
)

func init() {
	// 127.100.0.0 – 127.227.255.255, random /24 per process.
	addrNext = uint32(100+mrand.IntN(128))<<16 | uint32(mrand.IntN(256))<<8
}

func allocateAddress() (ip string, cport, fport int, err error) {
	addrMu.Lock()
	defer addrMu.Unlock()
	for tries := 0; tries < 64; tries++ {
		addrNext++
		if addrNext&0xff == 0 || addrNext&0xff == 255 {
			continue
		}
		ip = fmt.Sprintf("127.%d.%d.%d", addrNext>>16&0xff, addrNext>>8&0xff, addrNext&0xff)
		if free(ip, clientPort) && free(ip, federationPort) {
			return ip, clientPort, federationPort, nil
		}
		// Something listens on a wildcard address with our port: let the
		// kernel pick ports on this address instead.
		cport, err1 := kernelPort(ip)
		fport, err2 := kernelPort(ip)
		if err1 == nil && err2 == nil && cport != fport {
			return ip, cport, fport, nil
		}
	}
	return "", 0, 0, fmt.Errorf("no free loopback address found (last tried %s)", ip)
}

func free(ip string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func kernelPort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeServerCert issues the server's federation certificate from the
// Complement CA, for its server name and its loopback address.
func writeServerCert(cfg *config.Complement, s *server) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: s.name, Organization: []string{"Palpo Complement deployer"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{s.name},
		IPAddresses:  []net.IP{net.ParseIP(s.ip)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, cfg.CACertificate, &key.PublicKey, cfg.CAPrivateKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(s.dir, "tls.crt"), certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "tls.key"), keyPEM, 0o600)
}

// testLogName turns a test name into a relative directory name for its logs.
func testLogName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.', r == '/':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.Trim(b.String(), "/.")
	if out == "" {
		out = "unnamed"
	}
	return strings.ReplaceAll(out, "..", "__")
}
