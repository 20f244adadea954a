package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// waitTimeout bounds every request and every wait for something a client
// should observe. It is generous: it only decides how long a broken server
// takes to fail a test, never whether a working one passes.
const waitTimeout = 20 * time.Second

// reqCtx returns a context for one client request or wait.
func reqCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// must unwraps the result of a client call, failing the test with what
// when the call returned an error: must(cli.Whoami(ctx))(t, "whoami").
func must[T any](v T, err error) func(t *testing.T, what string) T {
	return func(t *testing.T, what string) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

// noErr fails the test when a client call returned an error.
func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// requireMatrixError fails the test unless err is a Matrix error response
// with the given HTTP status and errcode.
func requireMatrixError(t *testing.T, what string, err error, status int, errcode string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %d %s", what, status, errcode)
	}
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil {
		t.Fatalf("%s: %v, want a %d %s response", what, err, status, errcode)
	}
	got := ""
	if he.RespError != nil {
		got = he.RespError.ErrCode
	}
	if he.Response.StatusCode != status || got != errcode {
		t.Fatalf("%s: %d %q (%v), want %d %s", what, he.Response.StatusCode, got, err, status, errcode)
	}
}

// syncingUser is a mautrix-go client whose DefaultSyncer runs in the
// background (Client.SyncWithContext, as a real client does) and records
// every event it dispatches, so that the test can wait for what this user
// should see.
type syncingUser struct {
	*mautrix.Client
	t *testing.T

	mu       sync.Mutex
	events   []*event.Event
	changed  chan struct{} // closed and replaced whenever events or problems change
	problems []string      // content the syncer could not parse, a sync that failed
	stopped  bool
}

// failFastSyncer is mautrix's DefaultSyncer, except that a failed /sync
// stops the sync loop with the error instead of retrying after ten seconds:
// in a test every failed /sync is a bug to report.
type failFastSyncer struct {
	*mautrix.DefaultSyncer
}

// OnFailedSync makes every /sync failure fatal.
func (failFastSyncer) OnFailedSync(_ *mautrix.RespSync, err error) (time.Duration, error) {
	return 0, err
}

// startSyncing starts cli's sync loop until the test ends. The setup
// functions add their handlers to the syncer first (the encryption tests
// plug an Olm machine in), so they run before the test sees an event.
func startSyncing(t *testing.T, cli *mautrix.Client, setup ...func(*mautrix.DefaultSyncer)) *syncingUser {
	u := &syncingUser{Client: cli, t: t, changed: make(chan struct{})}
	syncer := mautrix.NewDefaultSyncer()
	for _, f := range setup {
		f(syncer)
	}
	syncer.ParseErrorHandler = func(evt *event.Event, err error) bool {
		if errors.Is(err, event.ErrUnsupportedContentType) || errors.Is(err, event.ErrContentAlreadyParsed) {
			return true
		}
		u.problem(fmt.Sprintf("event %s (%s) has content mautrix cannot parse: %v", evt.ID, evt.Type.Type, err))
		return false
	}
	syncer.OnEvent(func(_ context.Context, evt *event.Event) { u.record(evt) })
	cli.Syncer = failFastSyncer{syncer}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := cli.SyncWithContext(ctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			u.problem(fmt.Sprintf("sync loop stopped: %v", err))
		}
		u.mu.Lock()
		u.stopped = true
		u.mu.Unlock()
		u.problem("") // wake waiters
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, p := range u.problems {
			t.Errorf("%s: %s", cli.UserID, p)
		}
	})
	return u
}

func (u *syncingUser) record(evt *event.Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.events = append(u.events, evt)
	close(u.changed)
	u.changed = make(chan struct{})
}

// problem records something the test must fail for ("" only wakes waiters).
func (u *syncingUser) problem(p string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if p != "" {
		u.problems = append(u.problems, p)
	}
	close(u.changed)
	u.changed = make(chan struct{})
}

// waitFor waits until the syncer has dispatched an event that match
// accepts, at position from or later in the order of dispatch, and returns
// it with the position just after it (to wait for a later event). what
// describes the event for the failure message.
func (u *syncingUser) waitFor(from int, what string, match func(*event.Event) bool) (*event.Event, int) {
	u.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		if e, i := u.find(from, len(u.events), match); e != nil {
			u.mu.Unlock()
			return e, i + 1
		}
		problems, stopped, changed := strings.Join(u.problems, "; "), u.stopped, u.changed
		u.mu.Unlock()
		if problems != "" || stopped {
			u.t.Fatalf("%s waiting for %s: %s (sync stopped: %v)", u.UserID, what, problems, stopped)
		}
		select {
		case <-changed:
		case <-deadline.C:
			u.t.Fatalf("%s did not see %s within %s; events seen:\n%s", u.UserID, what, waitTimeout, u.seen())
		}
	}
}

// sawBefore returns the first event among the first end the syncer
// dispatched that match accepts, or nil: with a position from waitFor, it
// shows that something did not arrive before something else did.
func (u *syncingUser) sawBefore(end int, match func(*event.Event) bool) *event.Event {
	u.mu.Lock()
	defer u.mu.Unlock()
	e, _ := u.find(0, end, match)
	return e
}

// find returns the first event in events[from:to] that match accepts and
// its position; the caller holds mu.
func (u *syncingUser) find(from, to int, match func(*event.Event) bool) (*event.Event, int) {
	for i := from; i < to; i++ {
		if match(u.events[i]) {
			return u.events[i], i
		}
	}
	return nil, -1
}

// seen lists the events dispatched so far, one a line, for failure messages.
func (u *syncingUser) seen() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var b strings.Builder
	for _, e := range u.events {
		sk := ""
		if e.StateKey != nil {
			sk = " state_key=" + *e.StateKey
		}
		fmt.Fprintf(&b, "  %s %s %s sender=%s%s source=%s content=%s\n", e.RoomID, e.ID, e.Type.Type, e.Sender, sk, e.Mautrix.EventSource, e.Content.VeryRaw)
	}
	return b.String()
}

// uiaChallenge sends body to url as cli and requires a 401
// user-interactive authentication answer; it returns the answer.
func uiaChallenge(t *testing.T, cli *mautrix.Client, method, url string, body any) *mautrix.RespUserInteractive {
	t.Helper()
	raw, err := cli.MakeFullRequest(reqCtx(t), mautrix.FullRequest{Method: method, URL: url, RequestJSON: body})
	var he mautrix.HTTPError
	if !errors.As(err, &he) || !he.IsStatus(http.StatusUnauthorized) {
		t.Fatalf("%s %s: %v, want a 401 user-interactive authentication answer", method, url, err)
	}
	var uia mautrix.RespUserInteractive
	if jerr := json.Unmarshal(raw, &uia); jerr != nil || uia.Session == "" || len(uia.Flows) == 0 {
		t.Fatalf("%s %s: 401 body %s is not a UIA answer with a session and flows (%v)", method, url, raw, jerr)
	}
	return &uia
}
