package httpx

// RouteAuth says how a registered route authenticates its caller.
type RouteAuth string

// The ways a route can authenticate, one per Router registration method.
const (
	// RouteRaw is a plain http.Handler registered with Raw: the router
	// applies no JSON conventions and no authentication to it.
	RouteRaw RouteAuth = "raw"
	// RoutePublic needs no access token (Public).
	RoutePublic RouteAuth = "public"
	// RouteAuthed needs the access token of a full account (Authed).
	RouteAuthed RouteAuth = "authed"
	// RouteGuestOK needs an access token, guests included (AuthedGuestOK).
	RouteGuestOK RouteAuth = "guest-ok"
	// RouteOptionalAuth checks a token when one is sent (OptionalAuth).
	RouteOptionalAuth RouteAuth = "optional-auth"
)

// Route is one pattern registered on a Router and how it authenticates.
type Route struct {
	Pattern string
	Auth    RouteAuth
}

// Routes lists every pattern registered on the router, in registration
// order. Tests use it to exercise every endpoint without a hand-kept list.
func (rt *Router) Routes() []Route {
	return append([]Route(nil), rt.routes...)
}

// record remembers a registered pattern for Routes.
func (rt *Router) record(pattern string, auth RouteAuth) {
	rt.routes = append(rt.routes, Route{Pattern: pattern, Auth: auth})
}
