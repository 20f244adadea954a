package federation

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	gosync "sync"
	"time"

	"github.com/palpo-go/palpo/internal/db"
)

// Sending to other servers. Each destination with something to send has
// its own worker, so a server that is down never slows the others. A
// worker sends transactions of up to 50 PDUs and 100 EDUs, oldest first:
// the durable rows of federation_queue plus, in memory, best-effort EDUs
// (typing notifications). Rows are deleted only after the destination
// answered 200; a failure backs the destination off exponentially (capped
// at an hour), and the backoff ends early when that server sends us a
// request. After a restart the workers resume from the table.

// Sender limits.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = time.Hour
	// maxEphemeral bounds the best-effort EDUs kept per destination.
	maxEphemeral = 100
	// ephemeralTTL is how long a best-effort EDU is worth sending: a
	// typing notification that arrives later is wrong.
	ephemeralTTL = 30 * time.Second
	// sendTimeout bounds one transaction.
	sendTimeout = 2 * time.Minute
)

// Sender sends PDUs and EDUs to other servers.
type Sender struct {
	svc *Service
	db  *db.DB

	mu         gosync.Mutex
	dests      map[string]*destination
	ctx        context.Context // nil until start
	cancel     context.CancelFunc
	wg         gosync.WaitGroup
	streamWake chan struct{}
	sources    []EDUSource
	typing     map[string]map[string]bool // room → local users typing now
}

// destination is the state of one destination's worker; its fields are
// guarded by Sender.mu.
type destination struct {
	name      string
	running   bool // a worker goroutine runs
	pending   bool // something was queued since the worker last looked
	ephemeral []ephemeralEDU
	backoff   time.Duration
	retryAt   time.Time
	alive     chan struct{} // cuts a backoff short
}

// ephemeralEDU is a best-effort EDU waiting in memory.
type ephemeralEDU struct {
	raw     json.RawMessage
	expires time.Time
}

func newSender(svc *Service) *Sender {
	return &Sender{svc: svc, db: svc.db, dests: map[string]*destination{}, streamWake: make(chan struct{}, 1), typing: map[string]map[string]bool{}}
}

// start runs the stream reader and the typing refresh, and resumes the
// destinations with queued rows or EDUs of a source.
func (s *Sender) start() {
	s.mu.Lock()
	if s.ctx != nil {
		s.mu.Unlock()
		return
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.Unlock()
	s.wg.Add(2)
	go s.runStream()
	go s.refreshTyping()
	dests, err := s.queuedDestinations(s.ctx)
	if err != nil {
		slog.Error("federation: reading the send queue", "err", err)
		dests = map[string]bool{}
	}
	s.mu.Lock()
	for name := range s.dests {
		if s.dests[name].pending {
			dests[name] = true
		}
	}
	sources := s.sources
	s.mu.Unlock()
	for _, src := range sources {
		if src.Destinations == nil {
			continue
		}
		names, err := src.Destinations(s.ctx)
		if err != nil {
			slog.Error("federation: reading an EDU source", "err", err)
		}
		for _, name := range names {
			dests[name] = true
		}
	}
	for name := range dests {
		s.Wake(name)
	}
}

// stop stops every worker and waits for them.
func (s *Sender) stop() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
}

// dest returns a destination's state, creating it. Call with s.mu held.
func (s *Sender) dest(name string) *destination {
	d := s.dests[name]
	if d == nil {
		d = &destination{name: name, alive: make(chan struct{}, 1)}
		s.dests[name] = d
	}
	return d
}

// wake tells a destination's worker that there is something to send,
// starting it if needed.
func (s *Sender) wake(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dest(name)
	d.pending = true
	if d.running || s.ctx == nil || s.ctx.Err() != nil {
		return
	}
	d.running = true
	s.wg.Add(1)
	go s.run(d)
}

// PeerAlive ends the backoff of a server that just sent us a request.
func (s *Sender) PeerAlive(server string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dests[server]
	if d == nil || d.backoff == 0 {
		return
	}
	d.backoff, d.retryAt = 0, time.Time{}
	select {
	case d.alive <- struct{}{}:
	default:
	}
}

// SendEphemeral sends an EDU to destinations on a best-effort basis: it is
// kept in memory only, and dropped if it cannot be delivered soon (typing
// notifications).
func (s *Sender) SendEphemeral(destinations []string, eduType string, content any) {
	raw, err := json.Marshal(map[string]any{"edu_type": eduType, "content": content})
	if err != nil {
		return
	}
	expires := time.Now().Add(ephemeralTTL)
	s.mu.Lock()
	for _, name := range s.others(destinations) {
		d := s.dest(name)
		if len(d.ephemeral) >= maxEphemeral {
			d.ephemeral = d.ephemeral[1:]
		}
		d.ephemeral = append(d.ephemeral, ephemeralEDU{raw: raw, expires: expires})
	}
	s.mu.Unlock()
	for _, name := range s.others(destinations) {
		s.wake(name)
	}
}

// run is a destination's worker: it sends until nothing is left.
func (s *Sender) run(d *destination) {
	defer s.wg.Done()
	for {
		if !s.waitBackoff(d) {
			return
		}
		s.mu.Lock()
		d.pending = false
		now := time.Now()
		var eph []json.RawMessage
		for _, e := range d.ephemeral {
			if now.Before(e.expires) {
				eph = append(eph, e.raw)
			}
		}
		d.ephemeral = nil
		s.mu.Unlock()

		b, err := s.nextBatch(d, eph)
		if err != nil {
			if s.ctx.Err() == nil {
				slog.Error("federation: reading what to send", "destination", d.name, "err", err)
			}
			s.failed(d, eph, err)
			continue
		}
		if b.empty() {
			s.mu.Lock()
			if d.pending {
				s.mu.Unlock()
				continue
			}
			d.running = false
			s.mu.Unlock()
			return
		}
		err = s.send(d.name, b)
		if err != nil && !permanentFailure(err) {
			s.failed(d, b.eph, err)
			continue
		}
		if err != nil {
			slog.Warn("federation: a destination refused a transaction; dropping it", "destination", d.name, "err", err)
		}
		if err := b.done(s.ctx, s); err != nil {
			s.failed(d, nil, err)
			continue
		}
		s.mu.Lock()
		d.backoff, d.retryAt = 0, time.Time{}
		s.mu.Unlock()
	}
}

// batch is what one transaction to a destination carries.
type batch struct {
	pdus     []queuedPDU       // durable rows
	edus     []queuedEDU       // durable rows
	external []json.RawMessage // from EDU sources
	acks     []func(context.Context) error
	eph      []json.RawMessage // best effort
}

func (b *batch) empty() bool {
	return len(b.pdus) == 0 && len(b.edus) == 0 && len(b.external) == 0 && len(b.eph) == 0
}

// done forgets what the destination acknowledged.
func (b *batch) done(ctx context.Context, s *Sender) error {
	ids := make([]int64, 0, len(b.pdus)+len(b.edus))
	for _, p := range b.pdus {
		ids = append(ids, p.id)
	}
	for _, e := range b.edus {
		ids = append(ids, e.id)
	}
	if err := s.deleteQueued(ctx, ids); err != nil {
		return err
	}
	for _, ack := range b.acks {
		if err := ack(ctx); err != nil {
			return err
		}
	}
	return nil
}

// nextBatch gathers the next transaction for a destination: the oldest
// queued PDUs and EDUs, then EDUs of the sources and best-effort ones as
// room remains (those that do not fit are kept for later).
func (s *Sender) nextBatch(d *destination, eph []json.RawMessage) (*batch, error) {
	pdus, edus, err := s.loadQueued(s.ctx, d.name)
	if err != nil {
		return nil, err
	}
	b := &batch{pdus: pdus, edus: edus}
	s.mu.Lock()
	sources := s.sources
	s.mu.Unlock()
	for _, src := range sources {
		room := maxTxnEDUs - len(b.edus) - len(b.external)
		if room <= 0 {
			break
		}
		got, ack, err := src.Pending(s.ctx, d.name, room)
		if err != nil {
			return nil, err
		}
		if len(got) > 0 {
			b.external = append(b.external, got[:min(len(got), room)]...)
			if ack != nil {
				b.acks = append(b.acks, ack)
			}
		}
	}
	if room := maxTxnEDUs - len(b.edus) - len(b.external); len(eph) > room {
		s.requeueEphemeral(d, eph[room:])
		eph = eph[:room]
	}
	b.eph = eph
	return b, nil
}

// EDUSource supplies durable EDUs that another domain keeps in its own
// tables (the end-to-end encryption domain's outbox of to-device
// messages): they go out in the destination's transactions, after the
// queued ones, and are acknowledged once the destination answered 200.
type EDUSource struct {
	// Pending returns up to limit EDUs (complete, with edu_type) waiting
	// for dest, oldest first, and a func that forgets them, called after
	// dest acknowledged the transaction that carried them. The same EDUs
	// are returned again until then.
	Pending func(ctx context.Context, dest string, limit int) (edus []json.RawMessage, ack func(context.Context) error, err error)
	// Destinations lists the destinations with pending EDUs, to resume
	// them when the server starts.
	Destinations func(ctx context.Context) ([]string, error)
}

// AddEDUSource registers a source of durable EDUs; call it before the
// server starts, and Wake a destination when the source has something new
// for it.
func (s *Sender) AddEDUSource(src EDUSource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sources = append(s.sources, src)
}

// Wake tells a destination's worker that a source has something new for
// it.
func (s *Sender) Wake(dest string) {
	if validDestination(dest) && dest != s.svc.serverName {
		s.wake(dest)
	}
}

// waitBackoff waits until a destination may be tried again; false when the
// sender stops (the worker is then marked stopped).
func (s *Sender) waitBackoff(d *destination) bool {
	s.mu.Lock()
	wait := time.Until(d.retryAt)
	s.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-s.ctx.Done():
		case <-d.alive:
		case <-t.C:
		}
		t.Stop()
	}
	if s.ctx.Err() != nil {
		s.mu.Lock()
		d.running = false
		s.mu.Unlock()
		return false
	}
	return true
}

// failed backs a destination off after a failed attempt, keeping its
// best-effort EDUs for the next one.
func (s *Sender) failed(d *destination, eph []json.RawMessage, err error) {
	s.requeueEphemeral(d, eph)
	s.mu.Lock()
	defer s.mu.Unlock()
	level := slog.LevelInfo // the first failure after a success; then quieter
	if d.backoff > 0 {
		level = slog.LevelDebug
	}
	d.backoff = min(max(2*d.backoff, minBackoff), maxBackoff)
	d.retryAt = time.Now().Add(d.backoff)
	if s.ctx.Err() == nil {
		slog.Log(s.ctx, level, "federation: sending failed; backing off", "destination", d.name, "retry_in", d.backoff, "err", err)
	}
}

// requeueEphemeral puts best-effort EDUs back at the front of the
// destination's list.
func (s *Sender) requeueEphemeral(d *destination, eph []json.RawMessage) {
	if len(eph) == 0 {
		return
	}
	expires := time.Now().Add(ephemeralTTL / 2)
	s.mu.Lock()
	defer s.mu.Unlock()
	back := make([]ephemeralEDU, 0, len(eph)+len(d.ephemeral))
	for _, raw := range eph {
		back = append(back, ephemeralEDU{raw: raw, expires: expires})
	}
	d.ephemeral = append(back, d.ephemeral...)
	if len(d.ephemeral) > maxEphemeral {
		d.ephemeral = d.ephemeral[len(d.ephemeral)-maxEphemeral:]
	}
}

// outTxn is the body of an outbound /send.
type outTxn struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus,omitempty"`
}

// send sends one transaction.
func (s *Sender) send(dest string, b *batch) error {
	ctx, cancel := context.WithTimeout(s.ctx, sendTimeout)
	defer cancel()
	txn := outTxn{Origin: s.svc.serverName, OriginServerTS: time.Now().UnixMilli(), PDUs: []json.RawMessage{}}
	for _, p := range b.pdus {
		ev, err := s.svc.rooms.EventByID(ctx, p.eventID)
		if err != nil {
			return err
		}
		if ev != nil {
			txn.PDUs = append(txn.PDUs, ev.JSON())
		}
	}
	for _, e := range b.edus {
		txn.EDUs = append(txn.EDUs, e.edu)
	}
	txn.EDUs = append(append(txn.EDUs, b.external...), b.eph...)
	var resp sendResponse
	uri := "/_matrix/federation/v1/send/" + url.PathEscape(b.txnID())
	if err := s.svc.fed.Client.Do(ctx, dest, http.MethodPut, uri, txn, &resp); err != nil {
		return err
	}
	for id, r := range resp.PDUs {
		if r.Error != "" {
			slog.Debug("federation: a destination did not accept an event", "destination", dest, "event", id, "error", r.Error)
		}
	}
	return nil
}

// txnID names a transaction after what it carries — the queue rows and
// the sources' EDUs — so that a retry of the same content has the same ID
// (the destination answers it from its memory instead of processing it
// twice) and different content never does. A transaction with best-effort
// EDUs, which are not retried as such, gets a unique suffix.
func (b *batch) txnID() string {
	h := sha256.New()
	var n [8]byte
	for _, p := range b.pdus {
		binary.BigEndian.PutUint64(n[:], uint64(p.id))
		h.Write(n[:])
	}
	h.Write([]byte{0})
	for _, e := range b.edus {
		binary.BigEndian.PutUint64(n[:], uint64(e.id))
		h.Write(n[:])
	}
	for _, e := range b.external {
		h.Write([]byte{0})
		h.Write(e)
	}
	id := "p" + hex.EncodeToString(h.Sum(nil)[:12])
	if len(b.eph) > 0 {
		id += "." + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return id
}

// permanentFailure reports whether a destination's answer means that
// retrying the same transaction is pointless (a 4xx other than
// authentication, timeout and rate limiting).
func permanentFailure(err error) bool {
	var re *RemoteError
	if !errors.As(err, &re) {
		return false
	}
	switch re.Status {
	case http.StatusUnauthorized, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return re.Status >= 400 && re.Status < 500
}
