// Package media is the media repository: uploads (direct and asynchronous),
// authenticated and legacy downloads, thumbnails, remote media fetched over
// federation and served to other servers, URL previews, and housekeeping
// (deletion, quarantine, retention).
//
// Content is stored once per distinct bytes (see Storage); the media table
// maps mxc:// URIs to it. Every download carries the safety headers of
// safety.go.
package media

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/db"
	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/httpx"
)

// Service is the media repository.
type Service struct {
	cfg        config.MediaConfig
	serverName string
	db         *db.DB
	store      Storage
	fed        *federation.Federation // nil: no remote media
	auth       func(r *http.Request) (*httpx.Principal, error)
	log        *slog.Logger
	now        func() time.Time

	thumbSizes   []config.ThumbnailSize
	legacyCutoff time.Time
	preview      *previewer // nil: previews are off

	locks   hashLocks
	uploads uploadSignal
	flight  singleflight.Group // remote fetches and previews in progress
	// decodeSlots bounds the images decoded at once (each may take
	// max_image_pixels × 4 bytes of memory).
	decodeSlots chan struct{}

	webOnce sync.Once
	web     *http.Client // for the Location of remote media

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns the media repository of cfg, storing content under
// data_dir/media. fed serves remote media; it may be nil.
func New(cfg *config.Config, d *db.DB, fed *federation.Federation) (*Service, error) {
	store, err := NewFileStorage(filepath.Join(cfg.DataDir, "media"))
	if err != nil {
		return nil, err
	}
	sizes, err := cfg.Media.Thumbnails()
	if err != nil {
		return nil, fmt.Errorf("media.thumbnail_sizes: %w", err)
	}
	cutoff, err := cfg.Media.LegacyCutoff()
	if err != nil {
		return nil, fmt.Errorf("media.legacy_freeze: %w", err)
	}
	s := &Service{
		cfg:          cfg.Media,
		serverName:   cfg.ServerName,
		db:           d,
		store:        store,
		fed:          fed,
		log:          slog.Default(),
		now:          time.Now,
		thumbSizes:   sizes,
		legacyCutoff: cutoff,
		decodeSlots:  make(chan struct{}, max(2, runtime.GOMAXPROCS(0))),
		stop:         make(chan struct{}),
	}
	if cfg.Media.URLPreviews {
		if s.preview, err = newPreviewer(&cfg.Media); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Routes registers the media endpoints: the client API (with the legacy
// /_matrix/media paths), the federation media endpoints and the admin API.
// Uploads and downloads are streamed (Router.Raw) with the media body limit
// instead of the router's JSON limit; they authenticate with rt.
func (s *Service) Routes(rt *httpx.Router) {
	s.auth = rt.Authenticate
	s.uploadRoutes(rt)
	s.downloadRoutes(rt)
	s.previewRoutes(rt)
	s.federationRoutes(rt)
	s.adminRoutes(rt)
}

// nowMS is the current time in milliseconds.
func (s *Service) nowMS() int64 { return s.now().UnixMilli() }

// mediaIDChars are the characters of generated media IDs.
const mediaIDChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newMediaID returns a random 24-character media ID (over 140 bits).
func newMediaID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = mediaIDChars[int(b[i])%len(mediaIDChars)]
	}
	return string(b)
}

// validMediaID checks the spec's media ID grammar: A-Z a-z 0-9 _ -.
func validMediaID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// mxcPath checks the server name and media ID of a request path: a
// malformed one is 400 M_INVALID_PARAM (the spec's sanitising of mxc://
// URIs against directory traversal).
func mxcPath(r *http.Request) (server, mediaID string, err error) {
	server, mediaID = r.PathValue("serverName"), r.PathValue("mediaId")
	if config.ValidateServerName(server) != nil {
		return "", "", httpx.InvalidParam("%q is not a valid server name", server)
	}
	if !validMediaID(mediaID) {
		return "", "", httpx.InvalidParam("A media ID consists of A-Z, a-z, 0-9, _ and -")
	}
	return server, mediaID, nil
}

// mxcURI formats an mxc:// URI.
func mxcURI(server, mediaID string) string { return "mxc://" + server + "/" + mediaID }

// rawHandler is a streamed endpoint: it writes its answer itself, or returns
// an error before writing anything.
type rawHandler func(w http.ResponseWriter, r *http.Request) error

// raw adapts h to http.Handler with the router's checks of the request text
// and Matrix error answers.
func raw(h rawHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := httpx.CheckRequestText(r)
		if err == nil {
			err = h(w, r)
		}
		if err != nil {
			httpx.WriteError(w, r, err)
		}
	})
}

// authed wraps a streamed endpoint that needs an access token. Guests are
// refused unless guestOK.
func (s *Service) authed(guestOK bool, h func(w http.ResponseWriter, r *http.Request, p *httpx.Principal) error) rawHandler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := s.auth(r)
		if err != nil {
			return err
		}
		if p.IsGuest && !guestOK {
			return httpx.NewError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guests may not use this endpoint")
		}
		return h(w, r, p)
	}
}

// Timeouts of downloads waiting for content (timeout_ms).
const (
	defaultWait = 20 * time.Second
	maxWait     = 60 * time.Second
)

// waitParam parses timeout_ms: the default is 20 s, the cap 60 s.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		return defaultWait, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, httpx.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return time.Duration(min(ms, maxWait.Milliseconds())) * time.Millisecond, nil
}

// uploadSignal wakes downloads waiting for the content of media IDs made
// with /create: every completed upload closes the current channel, and each
// waiter checks whether its own media arrived. Such uploads are rare enough
// that waking all waiters costs less than tracking them per ID (and
// nothing is left behind by IDs that expire unused).
type uploadSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next completed upload.
func (u *uploadSignal) wait() <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ch == nil {
		u.ch = make(chan struct{})
	}
	return u.ch
}

// broadcast wakes every waiter.
func (u *uploadSignal) broadcast() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ch != nil {
		close(u.ch)
		u.ch = nil
	}
}

// Start runs the housekeeping loop (expiry of unused IDs, retention,
// leftover staged files) until Stop.
func (s *Service) Start() {
	s.wg.Add(1)
	go s.housekeepingLoop()
}

// Stop ends the housekeeping loop and waits for it.
func (s *Service) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

// acquireDecode takes a decoding slot, or fails when ctx ends first.
func (s *Service) acquireDecode(ctx context.Context) (func(), error) {
	select {
	case s.decodeSlots <- struct{}{}:
		return func() { <-s.decodeSlots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
