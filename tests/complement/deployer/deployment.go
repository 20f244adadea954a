package palpodeploy

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/matrix-org/complement"
	"github.com/matrix-org/complement/client"
	"github.com/matrix-org/complement/config"
	"github.com/matrix-org/complement/ct"
	"github.com/matrix-org/complement/helpers"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

var _ complement.Deployment = (*Deployment)(nil)

// defaultPassword is the password Complement's deployments give users
// registered without one.
const defaultPassword = "complement_meets_min_password_req"

// Deployment is a set of running Palpo processes, hs1…hsN.
type Deployment struct {
	cfg       *config.Complement
	name      string // <package namespace>-<n>, unique in the test binary
	testDir   string // the deploying test's name, as a relative path
	dir       string
	order     []string
	servers   map[string]*server
	transport *http.Transport

	localparts atomic.Int64

	mu        sync.Mutex
	tokens    map[string]string // user ID → access token, for AppServiceUser
	devices   map[string]string // user ID → device ID
	destroyed bool
}

func (d *Deployment) server(t ct.TestLike, hsName, caller string) *server {
	t.Helper()
	s, ok := d.servers[hsName]
	if !ok {
		ct.Fatalf(t, "palpodeploy: %s: no homeserver %q in this deployment (have %s)", caller, hsName, strings.Join(d.order, ", "))
	}
	return s
}

// GetFullyQualifiedHomeserverName returns the server name, which is the
// short name itself: Palpo's server_name is exactly hs1, hs2, ….
func (d *Deployment) GetFullyQualifiedHomeserverName(t ct.TestLike, hsName string) spec.ServerName {
	t.Helper()
	d.server(t, hsName, "GetFullyQualifiedHomeserverName")
	return spec.ServerName(hsName)
}

func (d *Deployment) newClient(t ct.TestLike, s *server) *client.CSAPI {
	return client.NewCSAPI(client.CSAPIOpts{
		BaseURL:          s.baseURL(),
		Client:           client.NewLoggedClient(t, s.name, nil),
		SyncUntilTimeout: 5 * time.Second,
		Debug:            d.cfg.DebugLoggingEnabled,
	})
}

func (d *Deployment) UnauthenticatedClient(t ct.TestLike, hsName string) *client.CSAPI {
	t.Helper()
	return d.newClient(t, d.server(t, hsName, "UnauthenticatedClient"))
}

// Register creates a user named user-<n>[-suffix]; admins go through the
// shared-secret registration API, everyone else through /register with
// m.login.dummy.
func (d *Deployment) Register(t ct.TestLike, hsName string, opts helpers.RegistrationOpts) *client.CSAPI {
	t.Helper()
	c := d.newClient(t, d.server(t, hsName, "Register"))
	c.Password = opts.Password
	if c.Password == "" {
		c.Password = defaultPassword
	}
	localpart := "user-" + strconv.FormatInt(d.localparts.Add(1), 10)
	if opts.LocalpartSuffix != "" {
		localpart += "-" + opts.LocalpartSuffix
	}
	var userID, token, deviceID string
	if opts.IsAdmin {
		userID, token, deviceID = c.RegisterSharedSecret(t, localpart, c.Password, true)
	} else {
		userID, token, deviceID = c.RegisterUser(t, localpart, c.Password)
	}
	d.mu.Lock()
	d.tokens[userID] = token
	d.devices[userID] = deviceID
	d.mu.Unlock()
	c.UserID, c.AccessToken, c.DeviceID = userID, token, deviceID
	return c
}

// Login logs the user of an existing client in again, as a new device (or
// the one named in opts).
func (d *Deployment) Login(t ct.TestLike, hsName string, existing *client.CSAPI, opts helpers.LoginOpts) *client.CSAPI {
	t.Helper()
	c := d.newClient(t, d.server(t, hsName, "Login"))
	localpart, _, ok := strings.Cut(strings.TrimPrefix(existing.UserID, "@"), ":")
	if !ok || !strings.HasPrefix(existing.UserID, "@") {
		ct.Fatalf(t, "palpodeploy: Login: existing client has no valid user ID (%q)", existing.UserID)
	}
	c.Password = existing.Password
	if opts.Password != "" {
		c.Password = opts.Password
	}
	var loginOpts []client.LoginOpt
	if opts.DeviceID != "" {
		loginOpts = append(loginOpts, client.WithDeviceID(opts.DeviceID))
	}
	c.UserID, c.AccessToken, c.DeviceID = c.LoginUser(t, localpart, c.Password, loginOpts...)
	return c
}

// AppServiceUser returns a client for a user whose token the deployment
// knows. Palpo deployments have no application services (see the README), so
// only users registered through Register are known.
func (d *Deployment) AppServiceUser(t ct.TestLike, hsName, userID string) *client.CSAPI {
	t.Helper()
	c := d.newClient(t, d.server(t, hsName, "AppServiceUser"))
	if userID == "" {
		return c
	}
	d.mu.Lock()
	token, device := d.tokens[userID], d.devices[userID]
	d.mu.Unlock()
	if token == "" {
		ct.Fatalf(t, "palpodeploy: AppServiceUser: no access token for %s on %s (palpo harness: application services are not configured)", userID, hsName)
	}
	c.UserID, c.AccessToken, c.DeviceID = userID, token, device
	return c
}

// Restart stops every server gracefully and starts it again on the same
// addresses, with the same data.
func (d *Deployment) Restart(t ct.TestLike) error {
	t.Helper()
	for _, hsName := range d.order {
		s := d.servers[hsName]
		if s.running() {
			if err := s.stop(d.cfg.SpawnHSTimeout); err != nil {
				t.Errorf("palpodeploy: Restart: %s", err)
				return err
			}
		}
		if err := s.start(d.cfg.SpawnHSTimeout); err != nil {
			t.Errorf("palpodeploy: Restart: starting %s: %s\n%s", hsName, err, s.logTail(tailLines()))
			return err
		}
	}
	d.closeIdleConnections()
	return nil
}

func (d *Deployment) StopServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StopServer %s", hsName)
	s := d.server(t, hsName, "StopServer")
	if err := s.stop(d.cfg.SpawnHSTimeout); err != nil {
		ct.Fatalf(t, "palpodeploy: StopServer: %s", err)
	}
	d.closeIdleConnections()
}

func (d *Deployment) StartServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("StartServer %s", hsName)
	s := d.server(t, hsName, "StartServer")
	if err := s.start(d.cfg.SpawnHSTimeout); err != nil {
		ct.Fatalf(t, "palpodeploy: StartServer: %s: %s\n%s", hsName, err, s.logTail(tailLines()))
	}
	d.closeIdleConnections()
}

// PauseServer suspends the process with SIGSTOP, as `docker pause` freezes a
// container: connections stay open, nothing is answered.
func (d *Deployment) PauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("PauseServer %s", hsName)
	if err := d.server(t, hsName, "PauseServer").signal(syscall.SIGSTOP); err != nil {
		ct.Fatalf(t, "palpodeploy: PauseServer: %s", err)
	}
}

func (d *Deployment) UnpauseServer(t ct.TestLike, hsName string) {
	t.Helper()
	t.Logf("UnpauseServer %s", hsName)
	if err := d.server(t, hsName, "UnpauseServer").signal(syscall.SIGCONT); err != nil {
		ct.Fatalf(t, "palpodeploy: UnpauseServer: %s", err)
	}
}

// ContainerID returns the server's directory (its data, certificate and log),
// the nearest thing to a container this deployer has.
func (d *Deployment) ContainerID(t ct.TestLike, hsName string) string {
	t.Helper()
	return d.server(t, hsName, "ContainerID").dir
}

func (d *Deployment) Destroy(t ct.TestLike) {
	t.Helper()
	d.destroy(t)
}

// destroy kills the servers, keeps their logs if the test failed (or
// COMPLEMENT_ALWAYS_PRINT_SERVER_LOGS=1) and removes everything else. t is
// nil at the end of the package.
func (d *Deployment) destroy(t ct.TestLike) {
	d.mu.Lock()
	if d.destroyed {
		d.mu.Unlock()
		return
	}
	d.destroyed = true
	d.mu.Unlock()
	liveMu.Lock()
	delete(live, d)
	liveMu.Unlock()

	var wg sync.WaitGroup
	for _, s := range d.servers {
		wg.Add(1)
		go func() { defer wg.Done(); s.kill() }()
	}
	wg.Wait()
	d.closeIdleConnections()

	failed := t == nil || t.Failed()
	testName := "end-of-package"
	if t != nil {
		testName = t.Name()
	}
	if failed || d.cfg.AlwaysPrintServerLogs {
		d.keepLogs(t)
	}
	if script := d.cfg.PostTestScript; script != "" {
		for _, hsName := range d.order {
			out, err := exec.Command(script, d.servers[hsName].dir, testName, strconv.FormatBool(failed)).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "palpodeploy: post test script for %s: %v: %s\n", hsName, err, out)
			}
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		fmt.Fprintf(os.Stderr, "palpodeploy: removing %s: %v\n", d.dir, err)
	}
}

// keepLogs copies each server's log to LOGDIR/<test name>/<deployment>-<hs>.log
// and prints where it went, with its last lines, into the test's output.
func (d *Deployment) keepLogs(t ct.TestLike) {
	dir := filepath.Join(logDir(), d.testDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "palpodeploy: %v\n", err)
		return
	}
	for _, hsName := range d.order {
		s := d.servers[hsName]
		dst := filepath.Join(dir, fmt.Sprintf("%s-%s.log", d.name, hsName))
		if err := copyFile(s.logPath(), dst); err != nil {
			fmt.Fprintf(os.Stderr, "palpodeploy: keeping log of %s: %v\n", hsName, err)
			continue
		}
		msg := fmt.Sprintf("palpodeploy: server log of %s (deployment %s) kept at %s", hsName, d.name, dst)
		if tail := s.logTail(tailLines()); tail != "" {
			msg += "; last lines:\n" + tail
		}
		if t != nil {
			t.Logf("%s", msg)
		} else {
			fmt.Fprintln(os.Stderr, msg)
		}
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (d *Deployment) GetConfig() *config.Complement { return d.cfg }

// Network has no meaning without Docker.
func (d *Deployment) Network() string { return "" }

// RoundTripper sends federation requests addressed to https://hsN to that
// server's TLS listener, and everything else (Complement's own servers,
// 127.0.0.1:<port>) where it points. Certificates are checked against the
// Complement CA, for the name in the URL.
func (d *Deployment) RoundTripper() http.RoundTripper { return roundTripper{d} }

type roundTripper struct{ d *Deployment }

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	u := *req.URL
	u.Scheme = "https" // gomatrixserverlib may use matrix-federation://
	tr := rt.d.transport
	if s, ok := rt.d.servers[req.URL.Hostname()]; ok {
		u.Host = s.fedAddr()
		tr = s.transport
	}
	r2 := req.Clone(req.Context())
	r2.URL = &u
	if r2.Host == "" {
		r2.Host = req.URL.Host // the Host header stays the server name
	}
	return tr.RoundTrip(r2)
}

func (d *Deployment) closeIdleConnections() {
	d.transport.CloseIdleConnections()
	for _, s := range d.servers {
		if s.transport != nil {
			s.transport.CloseIdleConnections()
		}
	}
}
