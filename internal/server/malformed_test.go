package server_test

// A table-driven check that every registered route answers malformed
// requests with the right Matrix error and never with a 500: missing and bad
// tokens, bodies that are not JSON, of the wrong shape or too large, garbage
// path parameters, wrong methods, unknown paths, and random JSON-ish bodies
// and query strings. The routes come from the router itself, so a new route
// is covered without editing this file.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/testutil"
)

// malformedMaxBody is the test server's body limit: small, so that an
// oversized body is cheap and fits in the socket buffers (the server may
// answer before reading it all).
const malformedMaxBody = 8192

// fuzzRounds is the number of random requests sent to each route.
const fuzzRounds = 20

// noBodyRoutes are the POST/PUT routes whose spec defines no request body:
// they may ignore a body that is not JSON and succeed.
var noBodyRoutes = map[string]bool{
	"POST /_matrix/client/v3/logout":                true,
	"POST /_matrix/client/v3/logout/all":            true,
	"POST /_matrix/client/v3/rooms/{roomId}/forget": true,
	"POST /_matrix/media/v1/create":                 true,
}

// idParams are the path parameters that hold Matrix identifiers: a garbage
// value in them must be refused with a 4xx. Other parameters (event types,
// transaction IDs, state keys …) are free-form, and any answer but a 5xx is
// acceptable for them.
var idParams = map[string]bool{
	"roomId": true, "roomIdOrAlias": true, "roomAlias": true, "userId": true,
	"eventId": true, "deviceId": true, "filterId": true,
}

// wrongTypeProbes are bodies with a field of the wrong type for routes that
// read that field: each must be refused with 400 and a shape errcode. Most
// keys must be registered routes (see TestMalformedRequests).
var wrongTypeProbes = map[string]string{
	"POST /_matrix/client/v3/join/{roomIdOrAlias}":                           `{"reason": 1}`,
	"POST /_matrix/client/v3/rooms/{roomId}/join":                            `{"reason": ["x"]}`,
	"POST /_matrix/client/v3/knock/{roomIdOrAlias}":                          `{"reason": {}}`,
	"POST /_matrix/client/v3/rooms/{roomId}/leave":                           `{"reason": 1}`,
	"POST /_matrix/client/v3/rooms/{roomId}/invite":                          `{"user_id": 1}`,
	"POST /_matrix/client/v3/rooms/{roomId}/kick":                            `{"user_id": true}`,
	"POST /_matrix/client/v3/rooms/{roomId}/ban":                             `{"user_id": []}`,
	"POST /_matrix/client/v3/rooms/{roomId}/unban":                           `{"user_id": {}}`,
	"PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}":         `{"reason": 5}`,
	"PUT /_matrix/client/v3/directory/room/{roomAlias}":                      `{"room_id": 1}`,
	"PUT /_matrix/client/v3/directory/list/room/{roomId}":                    `{"visibility": 1}`,
	"POST /_matrix/client/v3/publicRooms":                                    `{"limit": "ten"}`,
	"POST /_matrix/client/v3/rooms/{roomId}/upgrade":                         `{"new_version": 11}`,
	"POST /_matrix/client/v3/createRoom":                                     `{"preset": 1}`,
	"PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}":                  `{"typing": "yes"}`,
	"POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}": `{"thread_id": 1}`,
	"POST /_matrix/client/v3/rooms/{roomId}/read_markers":                    `{"m.fully_read": 1}`,
	"PUT /_matrix/client/v3/presence/{userId}/status":                        `{"presence": 1}`,
	"POST /_matrix/client/v3/register":                                       `{"username": 1}`,
	"POST /_matrix/client/v3/account/password":                               `{"new_password": 1}`,
	"POST /_matrix/client/v3/account/deactivate":                             `{"erase": "yes"}`,
	"POST /_matrix/client/v3/user/{userId}/filter":                           `{"event_fields": "content"}`,
	"POST /_synapse/admin/v1/register":                                       `{"nonce": 1}`,
	"PUT /_matrix/client/v3/devices/{deviceId}":                              `{"display_name": 1}`,
	"POST /_matrix/client/v3/delete_devices":                                 `{"devices": "all"}`,
	"PUT /_matrix/client/v3/profile/{userId}/{keyName}":                      `{"displayname": 1}`,
	"POST /_matrix/client/v3/login":                                          `{"type": 1}`,
	"POST /_matrix/client/v3/refresh":                                        `{"refresh_token": 1}`,
}

// shapeErrcodes are the errcodes of a body of the wrong shape.
var shapeErrcodes = []string{"M_BAD_JSON", "M_INVALID_PARAM", "M_MISSING_PARAM", "M_NOT_JSON"}

func TestMalformedRequests(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		start := time.Now()
		srv := testutil.Start(t, b, func(c *config.Config) { c.MaxBodyBytes = malformedMaxBody })
		routes := srv.Routes()
		registered := map[string]bool{}
		for _, rt := range routes {
			registered[rt.Pattern] = true
		}
		f := newFixture(t, srv, registered[putAliasRoute])
		// A probe may name a route another package has not registered yet;
		// most of them must match, so that the table cannot rot unseen.
		probed := 0
		for p := range wrongTypeProbes {
			if registered[p] {
				probed++
			} else {
				t.Logf("wrongTypeProbes names %q, which is not a registered route", p)
			}
		}
		if probed < len(wrongTypeProbes)*3/4 {
			t.Errorf("only %d of %d wrongTypeProbes name registered routes", probed, len(wrongTypeProbes))
		}
		mux := patternMux(routes)
		for _, rt := range routes {
			t.Run(rt.Pattern, func(t *testing.T) {
				f.checkRoute(t, rt, mux)
				f.checkAlive(t)
			})
		}
		t.Run("unknown paths", func(t *testing.T) { f.checkUnknownPaths(t, routes, mux) })
		t.Run("deep probes", f.checkDeepProbes)
		t.Logf("%d routes checked with %d requests in %v; answers by status: %v",
			len(routes), f.requests, time.Since(start).Round(time.Millisecond), f.statuses)
	})
}

// putAliasRoute creates room aliases; the fixture has an alias when the
// server serves it.
const putAliasRoute = "PUT /_matrix/client/v3/directory/room/{roomAlias}"

// fixturePassword is the password of the fixture's user.
const fixturePassword = "fuzzer-password"

// fixture is the world the requests are made in: a user joined to a room
// with a message, an alias and a filter, plus a guest.
type fixture struct {
	srv        *testutil.Server
	serverName string
	userID     string
	token      string // current access token of userID
	deviceID   string // its device
	guestID    string
	guestToken string
	roomID     string
	eventID    string
	alias      string
	withAlias  bool // alias exists (and is restored)
	filterID   string
	txn        int
	requests   int         // requests sent
	statuses   map[int]int // answers by status code
}

func newFixture(t *testing.T, srv *testutil.Server, withAlias bool) *fixture {
	t.Helper()
	ctx := context.Background()
	u := srv.NewUser(t, "fuzzer", fixturePassword)
	f := &fixture{srv: srv, serverName: srv.Config.ServerName, userID: u.UserID, token: u.AccessToken, deviceID: u.DeviceID,
		statuses: map[int]int{}}
	g, err := srv.Accounts.CreateUser(ctx, "fuzzguest", "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	f.guestID = g.UserID
	f.newGuestSession(t)
	f.alias, f.withAlias = "#fuzz:"+f.serverName, withAlias

	r := f.mustDo(t, "POST", "/_matrix/client/v3/createRoom", `{"preset":"public_chat","name":"fuzz"}`)
	f.roomID, _ = r.JSON["room_id"].(string)
	r = f.mustDo(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(f.roomID)+"/send/m.room.message/setup",
		`{"msgtype":"m.text","body":"hello"}`)
	f.eventID, _ = r.JSON["event_id"].(string)
	if f.withAlias {
		f.mustDo(t, "PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape(f.alias), `{"room_id":"`+f.roomID+`"}`)
	}
	r = f.mustDo(t, "POST", "/_matrix/client/v3/user/"+url.PathEscape(f.userID)+"/filter", `{}`)
	f.filterID, _ = r.JSON["filter_id"].(string)
	if f.roomID == "" || f.eventID == "" || f.filterID == "" {
		t.Fatalf("fixture incomplete: %+v", f)
	}
	return f
}

// newGuestSession logs the guest in afresh.
func (f *fixture) newGuestSession(t *testing.T) {
	t.Helper()
	gs, err := f.srv.Accounts.NewSession(context.Background(), f.guestID, "", "guest", "127.0.0.1", "malformed_test", false)
	if err != nil {
		t.Fatalf("guest session: %v", err)
	}
	f.guestToken = gs.AccessToken
}

// restore undoes what a request that succeeded may have changed: it logs
// the user and the guest in afresh (the request may have logged out or
// deleted the device), joins the room again and puts the alias back.
func (f *fixture) restore(t *testing.T) {
	t.Helper()
	sess, err := f.srv.Accounts.NewSession(context.Background(), f.userID, "", "fuzz", "127.0.0.1", "malformed_test", false)
	if err != nil {
		t.Fatalf("restoring the session: %v", err)
	}
	f.token, f.deviceID = sess.AccessToken, sess.DeviceID
	f.newGuestSession(t)
	f.mustDo(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(f.roomID)+"/join", `{}`)
	if !f.withAlias {
		return
	}
	// 409 if the alias still exists.
	r := f.send(t, request{method: "PUT", path: "/_matrix/client/v3/directory/room/" + url.PathEscape(f.alias),
		body: []byte(`{"room_id":"` + f.roomID + `"}`), auth: "Bearer " + f.token})
	if r.Status != http.StatusOK && r.Status != http.StatusConflict {
		t.Fatalf("restoring the alias: %d %s", r.Status, r.Body)
	}
}

// checkAlive fails the test if the server stopped answering or the user's
// session stopped working.
func (f *fixture) checkAlive(t *testing.T) {
	t.Helper()
	if r := f.send(t, request{method: "GET", path: "/_matrix/client/versions"}); r.Status != http.StatusOK {
		t.Fatalf("server no longer serves /versions: %d %s", r.Status, r.Body)
	}
	f.mustDo(t, "GET", "/_matrix/client/v3/account/whoami", "")
}

// mustDo sends an authenticated request of the fixture user and fails the
// test unless it succeeds.
func (f *fixture) mustDo(t *testing.T, method, path, body string) *testutil.Response {
	t.Helper()
	req := request{method: method, path: path, auth: "Bearer " + f.token}
	if body != "" {
		req.body = []byte(body)
	}
	r := f.send(t, req)
	if r.Status != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, r.Status, r.Body)
	}
	return r
}

// request is one HTTP request of the test.
type request struct {
	method string
	path   string // escaped path, with the query if any
	body   []byte // nil: no body
	// chunked sends the body without a Content-Length.
	chunked bool
	// auth is the Authorization header ("" for none).
	auth string
}

func (r request) String() string {
	return fmt.Sprintf("%s %s auth=%q body=%s", r.method, shorten(r.path), r.auth, shorten(string(r.body)))
}

// shorten cuts s for messages.
func shorten(s string) string {
	if len(s) > 160 {
		return fmt.Sprintf("%s…(%d bytes)", s[:160], len(s))
	}
	return s
}

// client gives up on requests that hang (a long-poll the test did not mean).
var client = &http.Client{Timeout: 20 * time.Second}

// send performs req against the fixture's server.
func (f *fixture) send(t *testing.T, req request) *testutil.Response {
	t.Helper()
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
		if req.chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
	}
	hr, err := http.NewRequest(req.method, f.srv.URL+req.path, body)
	if err != nil {
		t.Fatalf("%v: %v", req, err)
	}
	if req.body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if req.auth != "" {
		hr.Header.Set("Authorization", req.auth)
	}
	resp, err := client.Do(hr)
	if err != nil {
		t.Fatalf("%v: %v (did the server die?)", req, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%v: reading the answer: %v", req, err)
	}
	f.requests++
	f.statuses[resp.StatusCode]++
	out := &testutil.Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
	_ = json.Unmarshal(raw, &out.JSON)
	return out
}

// expectation is what an answer may be. Whatever it says, an answer is never
// a 5xx, always JSON with CORS headers, and an error is always an object
// with an errcode (or a user-interactive-auth challenge).
type expectation struct {
	status   int      // the exact status wanted; 0: any 4xx (or 2xx if success)
	errcodes []string // the errcodes allowed; empty: any
	success  bool     // a 2xx answer is acceptable
	uia      bool     // a 401 user-interactive-auth challenge is acceptable
}

// exactly wants one status and errcode.
func exactly(status int, errcode string) expectation {
	return expectation{status: status, errcodes: []string{errcode}}
}

// refused wants a 4xx with one of errcodes (any errcode if none given); a
// UIA challenge counts as a refusal.
func refused(errcodes ...string) expectation { return expectation{errcodes: errcodes, uia: true} }

// anyAnswer accepts a success or any well-formed client error.
func anyAnswer() expectation { return expectation{success: true, uia: true} }

// check sends req, checks the answer against want and reports problems as
// test errors labelled with the case name. It restores the fixture after a
// request that succeeded and could have changed something.
func (f *fixture) check(t *testing.T, name string, req request, want expectation) {
	t.Helper()
	r := f.send(t, req)
	if problem := judge(r, want); problem != "" {
		t.Errorf("%s: %v\n\t→ %d %s\n\t%s", name, req, r.Status, shorten(string(r.Body)), problem)
	}
	if r.Status < 300 && req.method != http.MethodGet && req.method != http.MethodHead {
		f.restore(t)
	}
}

// judge returns what is wrong with r given want, or "".
func judge(r *testutil.Response, want expectation) string {
	switch {
	case r.Status >= 500:
		return "server error"
	case r.Header.Get("Access-Control-Allow-Origin") != "*":
		return "no CORS header"
	case !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"):
		return fmt.Sprintf("Content-Type %q, want application/json", r.Header.Get("Content-Type"))
	case !json.Valid(r.Body):
		return "body is not JSON"
	case r.Status >= 300 && r.JSON == nil:
		return "error body is not a JSON object"
	}
	isUIA := r.Status == http.StatusUnauthorized && r.JSON["flows"] != nil
	errcode := r.ErrCode()
	if r.Status >= 400 && errcode == "" && !isUIA {
		return "error without an errcode"
	}
	if want.status != 0 {
		if r.Status != want.status || (len(want.errcodes) > 0 && !slices.Contains(want.errcodes, errcode)) {
			return fmt.Sprintf("want %d %v", want.status, want.errcodes)
		}
		return ""
	}
	switch {
	case r.Status >= 200 && r.Status < 300:
		if !want.success {
			return fmt.Sprintf("succeeded, want a 4xx %v", want.errcodes)
		}
	case isUIA:
		if !want.uia {
			return fmt.Sprintf("UIA challenge, want a 4xx %v", want.errcodes)
		}
	case r.Status >= 400 && r.Status < 500:
		if len(want.errcodes) > 0 && !slices.Contains(want.errcodes, errcode) {
			return fmt.Sprintf("errcode %s, want one of %v", errcode, want.errcodes)
		}
	default:
		return fmt.Sprintf("unexpected status %d", r.Status)
	}
	return ""
}

// segment is one element of a route's path: literal text, a {name}
// parameter, or a {name...} rest parameter.
type segment struct {
	literal string
	param   string
}

// splitPattern parses a ServeMux pattern "METHOD /path/{param}/…".
func splitPattern(pattern string) (method string, segs []segment) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		method, path = "", pattern
	}
	for _, s := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		switch {
		case s == "{$}":
			segs = append(segs, segment{literal: ""})
		case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
			segs = append(segs, segment{param: strings.TrimSuffix(strings.Trim(s, "{}"), "...")})
		default:
			segs = append(segs, segment{literal: s})
		}
	}
	return method, segs
}

// render builds an escaped path from segs, with the fixture's plausible
// value for each parameter except the ones in override (already escaped).
func (f *fixture) render(segs []segment, override map[string]string) string {
	var b strings.Builder
	for _, s := range segs {
		b.WriteByte('/')
		switch {
		case s.param == "":
			b.WriteString(s.literal)
		case override[s.param] != "":
			b.WriteString(override[s.param])
		default:
			v, _ := f.value(s.param)
			b.WriteString(url.PathEscape(v))
		}
	}
	return b.String()
}

// value is a plausible value of a path parameter: the fixture's real room,
// user, event … so that a request gets past the path to its body. ok is
// false for a parameter the fixture does not know (the value is then a
// placeholder).
func (f *fixture) value(param string) (v string, ok bool) {
	switch param {
	case "roomId", "roomIdOrAlias":
		return f.roomID, true
	case "roomAlias":
		return f.alias, true
	case "userId":
		return f.userID, true
	case "eventId":
		return f.eventID, true
	case "deviceId":
		return f.deviceID, true
	case "filterId":
		return f.filterID, true
	case "eventType":
		return "m.room.message", true
	case "stateKey":
		return "palpo.test", true
	case "type":
		return "org.palpo.test", true
	case "keyName":
		return "displayname", true
	case "receiptType":
		return "m.read", true
	case "relType":
		return "m.thread", true
	case "txnId":
		f.txn++
		return fmt.Sprintf("malformed-%d", f.txn), true
	case "serverName":
		return f.serverName, true
	}
	return "palpo-test", false
}

// patternMux is a ServeMux with every route's pattern, used to ask which
// methods and paths the server routes.
func patternMux(routes []httpx.Route) *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.Pattern, http.NotFoundHandler())
	}
	return mux
}

// routed reports whether some registered pattern serves method on path.
func routed(mux *http.ServeMux, method, path string) bool {
	req, err := http.NewRequest(method, "http://palpo.test"+path, nil)
	if err != nil {
		return false
	}
	_, pattern := mux.Handler(req)
	return pattern != ""
}

// authCases are the requests without a usable token, and what a route of
// each kind must answer to them.
var authCases = []struct {
	name  string
	auth  string // Authorization header
	query string // appended to the path
	want  map[httpx.RouteAuth]expectation
}{
	{"no token", "", "", map[httpx.RouteAuth]expectation{
		httpx.RouteAuthed: exactly(401, "M_MISSING_TOKEN"), httpx.RouteGuestOK: exactly(401, "M_MISSING_TOKEN"),
	}},
	{"unknown bearer token", "Bearer not-a-real-token", "", map[httpx.RouteAuth]expectation{
		httpx.RouteAuthed: exactly(401, "M_UNKNOWN_TOKEN"), httpx.RouteGuestOK: exactly(401, "M_UNKNOWN_TOKEN"),
		httpx.RouteOptionalAuth: exactly(401, "M_UNKNOWN_TOKEN"),
	}},
	{"unknown query token", "", "access_token=not-a-real-token", map[httpx.RouteAuth]expectation{
		httpx.RouteAuthed: exactly(401, "M_UNKNOWN_TOKEN"), httpx.RouteGuestOK: exactly(401, "M_UNKNOWN_TOKEN"),
		httpx.RouteOptionalAuth: exactly(401, "M_UNKNOWN_TOKEN"),
	}},
	{"non-bearer authorization", "Basic dXNlcjpwYXNz", "", map[httpx.RouteAuth]expectation{
		httpx.RouteAuthed: exactly(401, "M_MISSING_TOKEN"), httpx.RouteGuestOK: exactly(401, "M_MISSING_TOKEN"),
	}},
	{"empty bearer token", "Bearer ", "", map[httpx.RouteAuth]expectation{
		httpx.RouteAuthed: exactly(401, "M_MISSING_TOKEN"), httpx.RouteGuestOK: exactly(401, "M_MISSING_TOKEN"),
	}},
}

// hasBody reports whether requests of method carry a JSON body.
func hasBody(method string) bool { return method == http.MethodPost || method == http.MethodPut }

// checkRoute sends every kind of malformed request to one route.
func (f *fixture) checkRoute(t *testing.T, rt httpx.Route, mux *http.ServeMux) {
	method, segs := splitPattern(rt.Pattern)
	if method == "" {
		method = http.MethodGet
	}
	for _, s := range segs {
		if _, ok := f.value(s.param); s.param != "" && !ok {
			t.Logf("no plausible value for {%s}: add one to fixture.value", s.param)
		}
	}
	path := f.render(segs, nil)
	f.checkMethods(t, segs, mux)
	if rt.Auth == httpx.RouteRaw {
		return // raw handlers (metrics, health, media streams) own their answers
	}
	if rt.Auth == httpx.RouteSigned {
		// Federation endpoints authenticate the calling server's signature
		// before anything else: unsigned requests, whatever they carry, are
		// refused. (The federation package tests signed malformed requests.)
		for _, body := range [][]byte{nil, []byte("this is not JSON"), []byte("{}")} {
			if body != nil && !hasBody(method) {
				continue
			}
			f.check(t, "unsigned", request{method: method, path: path, body: body, auth: "Bearer " + f.token}, exactly(401, "M_UNAUTHORIZED"))
		}
		return
	}
	var malformed []byte
	if hasBody(method) {
		malformed = []byte("this is not JSON")
	}
	bearer := func() string { return "Bearer " + f.token }

	// (a), (b): no usable token. Authentication comes before the body.
	for _, c := range authCases {
		want, ok := c.want[rt.Auth]
		if !ok {
			want = anyAnswer()
		}
		p := path
		if c.query != "" {
			p += "?" + c.query
		}
		f.check(t, c.name, request{method: method, path: p, body: malformed, auth: c.auth}, want)
	}
	guestWant := anyAnswer()
	if rt.Auth == httpx.RouteAuthed {
		guestWant = exactly(403, "M_GUEST_ACCESS_FORBIDDEN")
	}
	f.check(t, "guest token", request{method: method, path: path, body: malformed, auth: "Bearer " + f.guestToken}, guestWant)

	// (c): bodies that are not JSON, not an object, of the wrong types, or too large.
	if hasBody(method) {
		f.checkBodies(t, rt, method, segs, bearer)
	}

	// (d): garbage in each path parameter.
	for _, s := range segs {
		if s.param != "" {
			f.checkParam(t, method, segs, s.param, bearer)
		}
	}

	// Random JSON-ish bodies and query strings.
	h := fnv.New64a()
	h.Write([]byte(rt.Pattern))
	rng := rand.New(rand.NewPCG(1, h.Sum64()))
	for i := range fuzzRounds {
		req := request{method: method, path: f.render(segs, nil), auth: bearer()}
		if method == http.MethodGet || rng.IntN(2) == 0 {
			req.path += "?" + randomQuery(rng)
		}
		if method != http.MethodGet {
			req.body = randomBody(rng)
		}
		f.check(t, fmt.Sprintf("fuzz %d", i), req, anyAnswer())
	}
}

// checkParam sends values that are malformed, or name nothing that exists,
// in one path parameter.
func (f *fixture) checkParam(t *testing.T, method string, segs []segment, param string, bearer func() string) {
	send := func(name, value string, want expectation) {
		req := request{method: method, path: f.render(segs, map[string]string{param: value}), auth: bearer()}
		if hasBody(method) {
			req.body = []byte("{}")
		}
		f.check(t, name+" "+param, req, want)
	}
	if !idParams[param] {
		for _, v := range freeFormGarbage {
			send("odd", v, anyAnswer())
		}
		return
	}
	for _, v := range append(slices.Clone(freeFormGarbage), malformedIDs(f.serverName)...) {
		send("malformed", v, refused())
	}
	// Well-formed identifiers of things that do not exist: a request about
	// them may succeed (forgetting a room one never joined, redacting an
	// event the server has not seen) but must not fail on the server.
	for _, v := range f.nonexistent(param) {
		send("nonexistent", v, anyAnswer())
	}
}

// checkBodies sends the malformed bodies to a POST or PUT route.
func (f *fixture) checkBodies(t *testing.T, rt httpx.Route, method string, segs []segment, bearer func() string) {
	noBody := noBodyRoutes[rt.Pattern]
	notJSON, wrongShape, tooLargeChunked := exactly(400, "M_NOT_JSON"), refused(shapeErrcodes...), exactly(413, "M_TOO_LARGE")
	if noBody {
		notJSON, wrongShape, tooLargeChunked = anyAnswer(), anyAnswer(), anyAnswer()
	}
	huge := []byte(`{"a":"` + strings.Repeat("x", 2*malformedMaxBody) + `"}`)
	cases := []struct {
		name    string
		body    string
		chunked bool
		want    expectation
	}{
		{"not JSON", "this is not JSON", false, notJSON},
		{"truncated JSON", `{"reason": "x"`, false, notJSON},
		{"JSON with trailing garbage", `{} {}`, false, notJSON},
		{"invalid UTF-8", "{\"reason\": \"\xff\xfe\"}", false, anyAnswer()},
		{"empty body", "", false, anyAnswer()},
		{"JSON array", `[1, 2, 3]`, false, wrongShape},
		{"JSON string", `"a string"`, false, wrongShape},
		{"JSON number", `42`, false, wrongShape},
		{"JSON null", `null`, false, wrongShape},
		{"too large", string(huge), false, exactly(413, "M_TOO_LARGE")},
		{"too large, chunked", string(huge), true, tooLargeChunked},
	}
	for _, typ := range []string{`123456`, `"a string"`, `"a\u0000b"`, `"\ud800"`, `{"nested": {"x": [1]}}`, `[1, "two", null]`, `true`, `null`, `-1e400`} {
		cases = append(cases, struct {
			name    string
			body    string
			chunked bool
			want    expectation
		}{"every known field = " + typ, knownFieldsBody(typ), false, anyAnswer()})
	}
	if probe, ok := wrongTypeProbes[rt.Pattern]; ok {
		f.check(t, "wrong field type", request{method: method, path: f.render(segs, nil), body: []byte(probe), auth: bearer()},
			refused("M_BAD_JSON", "M_INVALID_PARAM", "M_MISSING_PARAM"))
	}
	for _, c := range cases {
		f.check(t, c.name, request{method: method, path: f.render(segs, nil), body: []byte(c.body), chunked: c.chunked, auth: bearer()}, c.want)
	}
}

// allMethods are the methods tried on every path.
var allMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, "PROPFIND"}

// deepProbes are requests that are right in every way but one field, to
// reach the code behind authentication that random bodies never get to.
// {user}, {password} and {device} stand for the fixture's own.
var deepProbes = []struct {
	name, method, path, body string
}{
	{"login, NUL in device name", "POST", "/_matrix/client/v3/login",
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"{user}"},"password":"{password}","initial_device_display_name":"a\u0000b"}`},
	{"login, NUL in device_id", "POST", "/_matrix/client/v3/login",
		`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"{user}"},"password":"{password}","device_id":"a\u0000b"}`},
	{"register, NUL in device name", "POST", "/_matrix/client/v3/register",
		`{"username":"probe1","password":"probe-password","auth":{"type":"m.login.dummy"},"initial_device_display_name":"a\u0000b"}`},
	{"register, NUL in device_id", "POST", "/_matrix/client/v3/register",
		`{"username":"probe2","password":"probe-password","auth":{"type":"m.login.dummy"},"device_id":"a\u0000b"}`},
	{"device rename, NUL", "PUT", "/_matrix/client/v3/devices/{device}", `{"display_name":"a\u0000b"}`},
	{"displayname, NUL", "PUT", "/_matrix/client/v3/profile/{userId}/displayname", `{"displayname":"a\u0000b"}`},
	{"avatar_url, NUL", "PUT", "/_matrix/client/v3/profile/{userId}/avatar_url", `{"avatar_url":"mxc://a/b\u0000"}`},
}

// checkDeepProbes sends the deep probes; each must be refused with 400
// M_INVALID_PARAM.
func (f *fixture) checkDeepProbes(t *testing.T) {
	localpart := strings.TrimPrefix(strings.SplitN(f.userID, ":", 2)[0], "@")
	for _, p := range deepProbes {
		fill := strings.NewReplacer("{user}", localpart, "{password}", fixturePassword,
			"{device}", url.PathEscape(f.deviceID), "{userId}", url.PathEscape(f.userID))
		f.check(t, p.name, request{method: p.method, path: fill.Replace(p.path), body: []byte(fill.Replace(p.body)), auth: "Bearer " + f.token},
			exactly(400, "M_INVALID_PARAM"))
	}
}

// checkMethods sends every method the route's path does not serve and
// wants 405 M_UNRECOGNIZED with an Allow header; OPTIONS is a CORS
// pre-flight and always succeeds.
func (f *fixture) checkMethods(t *testing.T, segs []segment, mux *http.ServeMux) {
	path := f.render(segs, nil)
	for _, m := range allMethods {
		if routed(mux, m, path) {
			continue
		}
		req := request{method: m, path: path, auth: "Bearer " + f.token}
		r := f.send(t, req)
		if problem := judge(r, exactly(405, "M_UNRECOGNIZED")); problem != "" {
			t.Errorf("wrong method: %v\n\t→ %d %s\n\t%s", req, r.Status, r.Body, problem)
		} else if r.Header.Get("Allow") == "" {
			t.Errorf("wrong method: %v: 405 without an Allow header", req)
		}
	}
	pre := f.send(t, request{method: http.MethodOptions, path: path})
	if pre.Status != http.StatusOK || pre.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("CORS pre-flight: OPTIONS %s → %d, CORS headers %v", path, pre.Status, pre.Header)
	}
}

// checkUnknownPaths wants 404 M_UNRECOGNIZED for paths no route serves:
// a fixed list, and every route's path with an extra segment.
func (f *fixture) checkUnknownPaths(t *testing.T, routes []httpx.Route, mux *http.ServeMux) {
	paths := []string{
		"/", "/_matrix", "/_matrix/", "/_matrix/client", "/_matrix/client/v3",
		"/_matrix/client/v3/", "/_matrix/client/v3/palpo-no-such-endpoint",
		"/_matrix/client/v4/versions", "/_matrix/client/r0/palpo-no-such-endpoint",
		"/_matrix/client/v3/rooms", "/_matrix/client/v3/rooms/" + url.PathEscape(f.roomID),
		"/_matrix/client//v3/account/whoami", "/_matrix/client/v3/../v3/account/whoami",
		"/_matrix/client/v3/account/whoami/", "/%00", "/%FF", "/_matrix/client/v3/%F0%9F%92%A5",
		"/" + strings.Repeat("a", 4000),
	}
	for _, rt := range routes {
		_, segs := splitPattern(rt.Pattern)
		paths = append(paths, f.render(segs, nil)+"/palpo-no-such-endpoint")
	}
	for _, p := range paths {
		if slices.ContainsFunc(allMethods, func(m string) bool { return routed(mux, m, p) }) {
			continue // another route serves this path
		}
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			for _, auth := range []string{"", "Bearer " + f.token} {
				req := request{method: m, path: p, auth: auth}
				if m == http.MethodPost {
					req.body = []byte("{}")
				}
				f.check(t, "unknown path", req, exactly(404, "M_UNRECOGNIZED"))
			}
		}
	}
}

// freeFormGarbage are escaped path parameter values that no parameter should
// choke on: NUL, invalid UTF-8, control characters, emoji, a long value.
var freeFormGarbage = []string{"%00", "%FF%FE", "a%00b", "%0A", "%20", "%F0%9F%92%A5", strings.Repeat("x", 3000)}

// malformedIDs are escaped values that are not valid room IDs, user IDs,
// event IDs or aliases: sigils alone, empty parts, spaces, over-long IDs.
// Device and filter IDs have no grammar: for them these name nothing.
func malformedIDs(serverName string) []string {
	esc := url.PathEscape
	return []string{
		"not-an-id", "%21", "%40", "%24", "%23", "%21%3A", "%40%3A" + esc(serverName), "%23%3A" + esc(serverName),
		esc("!room:bad server"), esc("@User With Spaces:" + serverName), esc("#a:b:c d"),
		esc("$" + strings.Repeat("e", 300)), esc("@" + strings.Repeat("u", 300) + ":" + serverName),
	}
}

// nonexistent are escaped, well-formed values of param that name nothing.
func (f *fixture) nonexistent(param string) []string {
	esc := url.PathEscape
	room, user, alias := esc("!nonexistent:"+f.serverName), esc("@nonexistent:"+f.serverName), esc("#nonexistent:"+f.serverName)
	switch param {
	case "roomId":
		return []string{room}
	case "roomIdOrAlias":
		return []string{room, alias}
	case "roomAlias":
		return []string{alias}
	case "userId":
		return []string{user}
	case "eventId":
		return []string{esc("$nonexistent")}
	}
	return nil
}

// knownFields are request fields that Matrix endpoints read; random and
// wrong-type bodies use them so that handlers see familiar names with
// unfamiliar values.
var knownFields = []string{
	"type", "user_id", "reason", "room_id", "content", "body", "msgtype", "displayname", "avatar_url",
	"presence", "status_msg", "typing", "timeout", "m.fully_read", "m.read", "m.read.private", "thread_id",
	"visibility", "preset", "name", "topic", "invite", "invite_3pid", "initial_state", "creation_content",
	"power_level_content_override", "room_version", "room_alias_name", "is_direct", "auth", "session",
	"password", "new_password", "logout_devices", "identifier", "device_id", "devices", "display_name",
	"initial_device_display_name", "refresh_token", "limit", "since", "filter", "server",
	"include_all_networks", "third_party_instance_id", "new_version", "event_fields", "event_format",
	"account_data", "room", "nonce", "username", "mac", "admin", "inhibit_login", "kind", "token",
	"generic_search_term", "via", "erase", "id_server", "id_access_token", "sid", "client_secret",
	"medium", "address", "state_key", "third_party_signed", "not_senders", "senders", "types",
	"not_types", "rooms", "not_rooms", "timeline", "state", "ephemeral", "include_leave", "lazy_load_members",
	"contains_url", "m.relates_to", "rel_type", "event_id", "guest_can_join", "join_rule", "history_visibility",
}

// knownFieldsBody is a JSON object with every known field set to value.
func knownFieldsBody(value string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range knownFields {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", k, value)
	}
	b.WriteByte('}')
	return b.String()
}

// randomBody is a random JSON-ish body: usually an object of known and odd
// fields holding random nesting, wrong types, huge numbers, unicode and
// nulls; sometimes another JSON value, rarely not JSON at all.
func randomBody(rng *rand.Rand) []byte {
	var b bytes.Buffer
	switch n := rng.IntN(20); {
	case n == 0:
		b.WriteString(`{"unterminated": [`)
	case n < 3:
		writeRandomValue(&b, rng, 0)
	default:
		writeRandomObject(&b, rng, 0)
	}
	return b.Bytes()
}

// oddStrings are JSON string literals that trip naive handlers.
var oddStrings = []string{
	`""`, `"\u0000"`, `"a\u0000b"`, `"\ud800"`, `"💥"`, `"\u202e"`, `"\n\t"`, `"../../etc/passwd"`,
	`"<script>"`, `"@user:localhost"`, `"!room:localhost"`, `"$event"`, `"#alias:localhost"`,
	`"m.room.message"`, `"m.login.password"`, `"m.login.dummy"`, `"public_chat"`, `"online"`, `"m.read"`,
	`"-1"`, `"9999999999999999999999"`, `"true"`, `"null"`,
}

// oddNumbers are JSON number literals: huge, tiny, negative, fractional.
var oddNumbers = []string{
	`0`, `-1`, `1.5`, `-0`, `9007199254740993`, `18446744073709551616`, `-9223372036854775809`,
	`1e308`, `1e400`, `-1e400`, `1e-400`, `123456789012345678901234567890`,
}

func writeRandomValue(b *bytes.Buffer, rng *rand.Rand, depth int) {
	n := rng.IntN(10)
	if depth >= 4 && n >= 8 {
		n = rng.IntN(8)
	}
	switch n {
	case 0:
		b.WriteString("null")
	case 1:
		b.WriteString([]string{"true", "false"}[rng.IntN(2)])
	case 2, 3:
		b.WriteString(oddNumbers[rng.IntN(len(oddNumbers))])
	case 4, 5:
		b.WriteString(oddStrings[rng.IntN(len(oddStrings))])
	case 6:
		s, _ := json.Marshal(randomUnicode(rng, rng.IntN(300)))
		b.Write(s)
	case 7:
		b.WriteString(`"` + strings.Repeat("long", rng.IntN(500)) + `"`)
	case 8:
		b.WriteByte('[')
		for i := range rng.IntN(5) {
			if i > 0 {
				b.WriteByte(',')
			}
			writeRandomValue(b, rng, depth+1)
		}
		b.WriteByte(']')
	default:
		writeRandomObject(b, rng, depth+1)
	}
}

func writeRandomObject(b *bytes.Buffer, rng *rand.Rand, depth int) {
	b.WriteByte('{')
	for i := range rng.IntN(7) {
		if i > 0 {
			b.WriteByte(',')
		}
		var key string
		if rng.IntN(10) < 7 {
			key = knownFields[rng.IntN(len(knownFields))]
		} else {
			key = randomUnicode(rng, 1+rng.IntN(12))
		}
		k, _ := json.Marshal(key)
		b.Write(k)
		b.WriteByte(':')
		writeRandomValue(b, rng, depth+1)
	}
	b.WriteByte('}')
}

// randomUnicode is a random string mixing ASCII, control characters, other
// scripts, emoji and NUL.
func randomUnicode(rng *rand.Rand, n int) string {
	ranges := [][2]rune{{0x20, 0x7e}, {0, 0x1f}, {0xa0, 0x2ff}, {0x400, 0x4ff}, {0x4e00, 0x4fff}, {0x1f300, 0x1f5ff}, {0x202a, 0x202e}}
	var b strings.Builder
	for range n {
		r := ranges[rng.IntN(len(ranges))]
		b.WriteRune(r[0] + rng.Int32N(r[1]-r[0]+1))
	}
	return b.String()
}

// queryParams are query parameter names that Matrix endpoints read.
var queryParams = []string{
	"from", "to", "limit", "dir", "filter", "since", "timeout", "full_state", "set_presence", "ts",
	"membership", "not_membership", "at", "server", "server_name", "via", "include_all_networks",
	"recurse", "suggested_only", "max_depth", "username", "token", "kind", "allow_remote",
	"use_state_after", "format", "include", "search_term", "user_id", "org.matrix.msc2716.batch_id",
}

// queryValues are escaped query values that no parameter should choke on.
var queryValues = []string{
	"", "-1", "0", "abc", "99999999999999999999", "1e99", "%00", "%FF", "true", "maybe", "b", "f",
	"%7B%22bad", "%7B%7D", "%5B%5D", "s0_0_0", "t1-2_3", "%F0%9F%92%A5", strings.Repeat("q", 2000),
}

// randomQuery is a random query string of known parameters with odd values.
func randomQuery(rng *rand.Rand) string {
	var parts []string
	for range 1 + rng.IntN(4) {
		parts = append(parts, queryParams[rng.IntN(len(queryParams))]+"="+queryValues[rng.IntN(len(queryValues))])
	}
	return strings.Join(parts, "&")
}
