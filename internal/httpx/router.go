package httpx

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Principal is the authenticated caller of a client-API request.
type Principal struct {
	UserID   string
	DeviceID string
	IsGuest  bool
	IsAdmin  bool
	// TokenHash identifies the access token used (for logout).
	TokenHash string
}

// Authenticator resolves an access token to its Principal. It returns an
// *Error (M_UNKNOWN_TOKEN, possibly soft) for tokens it does not accept.
type Authenticator func(ctx context.Context, token string) (*Principal, error)

// Handler is a JSON endpoint: it returns the value to encode (or a
// *Response) or an error.
type Handler func(r *http.Request) (any, error)

// AuthHandler is a JSON endpoint that needs an access token.
type AuthHandler func(r *http.Request, p *Principal) (any, error)

// Router maps patterns (net/http ServeMux syntax) to handlers and applies the
// Matrix conventions: JSON 404/405 as M_UNRECOGNIZED, CORS, body limits,
// panic recovery.
type Router struct {
	mux     *http.ServeMux
	auth    Authenticator
	maxBody int64
	routes  []Route // every registered pattern, for Routes
}

// NewRouter returns a Router using auth for access tokens and limiting JSON
// bodies to maxBody bytes.
func NewRouter(auth Authenticator, maxBody int64) *Router {
	return &Router{mux: http.NewServeMux(), auth: auth, maxBody: maxBody}
}

// Raw registers a plain http.Handler (media streams, metrics). It gets no
// body limit from the router.
func (rt *Router) Raw(pattern string, h http.Handler) {
	rt.record(pattern, RouteRaw)
	rt.mux.Handle(pattern, h)
}

// Public registers an endpoint that needs no access token.
func (rt *Router) Public(pattern string, h Handler) {
	rt.record(pattern, RoutePublic)
	rt.mux.Handle(pattern, rt.jsonHandler(h))
}

// Authed registers an endpoint that needs an access token of a full
// (non-guest) account.
func (rt *Router) Authed(pattern string, h AuthHandler) {
	rt.record(pattern, RouteAuthed)
	rt.mux.Handle(pattern, rt.jsonHandler(rt.requireAuth(h, false)))
}

// AuthedGuestOK registers an endpoint that guests may use too.
func (rt *Router) AuthedGuestOK(pattern string, h AuthHandler) {
	rt.record(pattern, RouteGuestOK)
	rt.mux.Handle(pattern, rt.jsonHandler(rt.requireAuth(h, true)))
}

// OptionalAuth registers an endpoint that works with or without a token: the
// Principal is nil when the request carries none.
func (rt *Router) OptionalAuth(pattern string, h AuthHandler) {
	rt.record(pattern, RouteOptionalAuth)
	rt.mux.Handle(pattern, rt.jsonHandler(func(r *http.Request) (any, error) {
		if AccessToken(r) == "" {
			return h(r, nil)
		}
		return rt.requireAuth(h, true)(r)
	}))
}

func (rt *Router) requireAuth(h AuthHandler, guestOK bool) Handler {
	return func(r *http.Request) (any, error) {
		p, err := rt.Authenticate(r)
		if err != nil {
			return nil, err
		}
		if p.IsGuest && !guestOK {
			return nil, NewError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guests may not use this endpoint")
		}
		return h(r.WithContext(context.WithValue(r.Context(), principalKey{}, p)), p)
	}
}

// Authenticate resolves the request's access token.
func (rt *Router) Authenticate(r *http.Request) (*Principal, error) {
	tok := AccessToken(r)
	if tok == "" {
		return nil, MissingToken()
	}
	return rt.auth(r.Context(), tok)
}

type principalKey struct{}

// PrincipalFrom returns the authenticated caller stored in ctx, or nil.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// AccessToken extracts the access token from the Authorization header or
// the deprecated access_token query parameter.
func AccessToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

func (rt *Router) jsonHandler(h Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > rt.maxBody {
			WriteError(w, r, TooLarge("Request body is larger than %d bytes", rt.maxBody))
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, rt.maxBody)
		}
		if err := checkRequestText(r); err != nil {
			WriteError(w, r, err)
			return
		}
		v, err := h(r)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		if resp, ok := v.(*Response); ok {
			for k, vs := range resp.Header {
				w.Header()[k] = vs
			}
			status := resp.Status
			if status == 0 {
				status = http.StatusOK
			}
			WriteJSON(w, status, resp.Body)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
}

// checkRequestText refuses a path or query that holds a NUL character or
// invalid UTF-8. No Matrix identifier or parameter contains them, and
// PostgreSQL cannot store them, so letting them through turns into a 500
// deep inside a handler.
func checkRequestText(r *http.Request) error {
	if !cleanText(r.URL.Path) {
		return InvalidParam("The request path contains a NUL character or invalid UTF-8")
	}
	if r.URL.RawQuery == "" {
		return nil
	}
	for name, values := range r.URL.Query() {
		ok := cleanText(name)
		for _, v := range values {
			ok = ok && cleanText(v)
		}
		if !ok {
			return InvalidParam("Query parameter %q contains a NUL character or invalid UTF-8", name)
		}
	}
	return nil
}

// cleanText reports whether s is valid UTF-8 without NUL characters.
func cleanText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// ServeHTTP dispatches a request. Requests no pattern matches are answered
// with M_UNRECOGNIZED: 404 for an unknown path, 405 for a known path with the
// wrong method (keeping the Allow header).
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setCORS(w.Header())
	if r.Method == http.MethodOptions {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}"))
		return
	}
	// r0 is the pre-1.0 name of the v3 client API; serve it from the same routes.
	if rest, ok := strings.CutPrefix(r.URL.Path, "/_matrix/client/r0/"); ok {
		r.URL.Path = "/_matrix/client/v3/" + rest
		if r.URL.RawPath != "" {
			r.URL.RawPath = "/_matrix/client/v3/" + strings.TrimPrefix(r.URL.RawPath, "/_matrix/client/r0/")
		}
	}
	h, pattern := rt.mux.Handler(r)
	if pattern == "" {
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		switch probe.status {
		case http.StatusMethodNotAllowed:
			if allow := probe.header.Get("Allow"); allow != "" {
				w.Header().Set("Allow", allow)
			}
			WriteJSON(w, http.StatusMethodNotAllowed, Unrecognized("Method %s is not allowed on this endpoint", r.Method).body())
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			// ServeMux path cleaning: answer like any unknown path.
			WriteJSON(w, http.StatusNotFound, Unrecognized("Unrecognized request").body())
		default:
			WriteJSON(w, http.StatusNotFound, Unrecognized("Unrecognized request").body())
		}
		return
	}
	rt.mux.ServeHTTP(w, r)
}

// statusProbe records what ServeMux's built-in not-found or not-allowed
// handler would answer, without writing it.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(s int)           { p.status = s }

// setCORS adds the headers the client-server spec requires on every response.
func setCORS(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
}

// ErrIsMatrix reports whether err carries the given errcode.
func ErrIsMatrix(err error, errcode string) bool {
	var me *Error
	return errors.As(err, &me) && me.ErrCode == errcode
}
