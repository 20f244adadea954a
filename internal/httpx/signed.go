package httpx

// RouteSigned is an endpoint of the federation API, authenticated by the
// calling server's signature (Authorization: X-Matrix) rather than an
// access token (Signed).
const RouteSigned RouteAuth = "signed"

// Signed registers an endpoint that authenticates its caller itself, by a
// server signature (the federation API's X-Matrix): the router checks no
// access token. limit, when not 0, replaces the router's body limit, for
// the few endpoints whose bodies are legitimately larger than a client
// request (a federation transaction carries up to 50 PDUs and 100 EDUs).
func (rt *Router) Signed(pattern string, limit int64, h Handler) {
	rt.record(pattern, RouteSigned)
	own := *rt
	if limit != 0 {
		own.maxBody = limit
	}
	rt.mux.Handle(pattern, own.jsonHandler(h))
}
