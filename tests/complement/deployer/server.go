package palpodeploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// server is one Palpo process. Its addresses stay the same across Stop/Start
// and Restart, so the other servers' PALPO_FEDERATION_RESOLVE stays right and
// Complement's clients keep working.
type server struct {
	name         string
	ip           string
	cport, fport int
	dir          string // tls.crt, tls.key, data/, palpo.log
	bin          string
	logLevel     string
	env          []string
	// transport dials the federation listener and checks its certificate
	// for the name hsN (Deployment.RoundTripper).
	transport *http.Transport

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error
	paused  bool
}

func (s *server) clientAddr() string { return net.JoinHostPort(s.ip, strconv.Itoa(s.cport)) }
func (s *server) fedAddr() string    { return net.JoinHostPort(s.ip, strconv.Itoa(s.fport)) }
func (s *server) baseURL() string    { return "http://" + s.clientAddr() }
func (s *server) logPath() string    { return filepath.Join(s.dir, "palpo.log") }

// running reports whether a process is alive (possibly paused).
func (s *server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *server) runningLocked() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// start launches the process and waits up to timeout for it to serve
// /_matrix/client/versions and accept connections on its federation port.
func (s *server) start(timeout time.Duration) error {
	s.mu.Lock()
	if s.runningLocked() {
		s.mu.Unlock()
		return fmt.Errorf("%s is already running", s.name)
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	fmt.Fprintf(logf, "=== palpodeploy: starting %s at %s (client %s, federation %s)\n",
		s.name, time.Now().Format(time.RFC3339Nano), s.clientAddr(), s.fedAddr())
	cmd := exec.Command(s.bin, "serve")
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a Ctrl-C in the terminal reaches the test
		// binary, which then kills the servers itself.
		Setpgid: true,
		// If the test binary dies (go test's -timeout kills it), so does
		// the server.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.mu.Unlock()
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	s.cmd, s.done, s.waitErr, s.paused = cmd, done, nil, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(done)
	}()
	s.mu.Unlock()

	if err := s.waitReady(done, timeout); err != nil {
		s.kill()
		return err
	}
	return nil
}

func (s *server) waitReady(done chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	url := s.baseURL() + "/_matrix/client/versions"
	lastErr := errors.New("no attempt made")
	for {
		select {
		case <-done:
			s.mu.Lock()
			err := s.waitErr
			s.mu.Unlock()
			return fmt.Errorf("process exited before it was ready (%v)", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, lastErr)
		}
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c, err := net.DialTimeout("tcp", s.fedAddr(), time.Second)
				if err == nil {
					c.Close()
					return nil
				}
				lastErr = fmt.Errorf("federation listener %s: %w", s.fedAddr(), err)
			} else {
				lastErr = fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
			}
		} else {
			lastErr = err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// stop ends the process: SIGTERM, then SIGKILL after grace. A paused
// process is continued first so that it can handle SIGTERM.
func (s *server) stop(grace time.Duration) error {
	s.mu.Lock()
	if !s.runningLocked() {
		s.mu.Unlock()
		return fmt.Errorf("%s is not running", s.name)
	}
	cmd, done := s.cmd, s.done
	if s.paused {
		cmd.Process.Signal(syscall.SIGCONT)
		s.paused = false
	}
	s.mu.Unlock()

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		fmt.Fprintf(os.Stderr, "palpodeploy: %s did not exit %v after SIGTERM, killing it\n", s.name, grace)
		cmd.Process.Kill()
		<-done
	}
	return nil
}

// kill ends the process at once (SIGKILL works on a stopped process too).
func (s *server) kill() {
	s.mu.Lock()
	if !s.runningLocked() {
		s.mu.Unlock()
		return
	}
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	cmd.Process.Kill()
	<-done
}

func (s *server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return fmt.Errorf("%s is not running", s.name)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return err
	}
	s.paused = sig == syscall.SIGSTOP
	return nil
}

// logTail returns the last n lines of the server's log.
func (s *server) logTail(n int) string {
	if n == 0 {
		return ""
	}
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = append([][]byte{[]byte(fmt.Sprintf("… (%d earlier lines in the full log)", len(lines)-n))}, lines[len(lines)-n:]...)
	}
	return string(bytes.Join(lines, []byte("\n")))
}
