package httpx

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type body struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func testRouter() http.Handler {
	auth := func(ctx context.Context, tok string) (*Principal, error) {
		switch tok {
		case "good":
			return &Principal{UserID: "@a:x", DeviceID: "D"}, nil
		case "guest":
			return &Principal{UserID: "@g:x", DeviceID: "G", IsGuest: true}, nil
		case "expired":
			return nil, UnknownToken(true)
		}
		return nil, UnknownToken(false)
	}
	rt := NewRouter(auth, 2048)
	rt.Public("POST /echo", func(r *http.Request) (any, error) {
		var b body
		if err := DecodeJSON(r, &b); err != nil {
			return nil, err
		}
		return b, nil
	})
	rt.Authed("GET /me", func(r *http.Request, p *Principal) (any, error) {
		if PrincipalFrom(r.Context()) != p {
			panic("principal not in context")
		}
		return map[string]string{"user_id": p.UserID}, nil
	})
	rt.Public("GET /panic", func(r *http.Request) (any, error) { panic("handler bug") })
	rt.Public("GET /created", func(r *http.Request) (any, error) {
		return &Response{Status: 201, Header: http.Header{"X-Test": {"1"}}, Body: Empty}, nil
	})
	return Recover(Instrument(rt, nil))
}

func do(t *testing.T, h http.Handler, method, path, body string, hdr ...string) (int, map[string]any, http.Header) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var m map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &m)
	return w.Code, m, w.Header()
}

func TestRouterErrors(t *testing.T) {
	h := testRouter()
	cases := []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
		errcode                  string
	}{
		{"ok", "POST", "/echo", `{"name":"x","count":2}`, nil, 200, ""},
		{"empty body", "POST", "/echo", ``, nil, 400, "M_NOT_JSON"},
		{"not json", "POST", "/echo", `{nope`, nil, 400, "M_NOT_JSON"},
		{"trailing garbage", "POST", "/echo", `{"name":"x"} x`, nil, 400, "M_NOT_JSON"},
		{"array", "POST", "/echo", `[1]`, nil, 400, "M_BAD_JSON"},
		{"wrong type", "POST", "/echo", `{"count":"two"}`, nil, 400, "M_BAD_JSON"},
		{"too large", "POST", "/echo", `{"name":"` + strings.Repeat("a", 5000) + `"}`, nil, 413, "M_TOO_LARGE"},
		{"unknown path", "GET", "/nowhere", ``, nil, 404, "M_UNRECOGNIZED"},
		{"wrong method", "DELETE", "/echo", ``, nil, 405, "M_UNRECOGNIZED"},
		{"no token", "GET", "/me", ``, nil, 401, "M_MISSING_TOKEN"},
		{"bad token", "GET", "/me", ``, []string{"Authorization", "Bearer nope"}, 401, "M_UNKNOWN_TOKEN"},
		{"bad scheme", "GET", "/me", ``, []string{"Authorization", "Basic good"}, 401, "M_MISSING_TOKEN"},
		{"guest", "GET", "/me", ``, []string{"Authorization", "Bearer guest"}, 403, "M_GUEST_ACCESS_FORBIDDEN"},
		{"token header", "GET", "/me", ``, []string{"Authorization", "Bearer good"}, 200, ""},
		{"token query", "GET", "/me?access_token=good", ``, nil, 200, ""},
		{"panic", "GET", "/panic", ``, nil, 500, "M_UNKNOWN"},
		{"custom status", "GET", "/created", ``, nil, 201, ""},
	}
	for _, c := range cases {
		status, m, _ := do(t, h, c.method, c.path, c.body, c.hdr...)
		if status != c.status || (c.errcode != "" && m["errcode"] != c.errcode) {
			t.Errorf("%s: got %d %v, want %d %s", c.name, status, m, c.status, c.errcode)
		}
	}
	_, m, _ := do(t, h, "GET", "/me", "", "Authorization", "Bearer expired")
	if m["soft_logout"] != true {
		t.Errorf("expired token without soft_logout: %v", m)
	}
	_, _, hdr := do(t, h, "DELETE", "/echo", "")
	if !strings.Contains(hdr.Get("Allow"), "POST") {
		t.Errorf("405 without Allow: %v", hdr)
	}
}

func TestLimiter(t *testing.T) {
	var nilLim *Limiter
	if ok, _ := nilLim.Allow("x"); !ok || nilLim.Check("x") != nil {
		t.Fatal("nil limiter must allow")
	}
	l := NewLimiter(1, 3)
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("burst request %d refused", i)
		}
	}
	ok, retry := l.Allow("a")
	if ok || retry <= 0 || retry > time.Second {
		t.Fatalf("over burst: ok=%v retry=%v", ok, retry)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("keys must be independent")
	}
	err := l.Check("a")
	me, _ := err.(*Error)
	if me == nil || me.Status != 429 || me.ErrCode != "M_LIMIT_EXCEEDED" || me.Extra["retry_after_ms"] == nil {
		t.Fatalf("Check: %v", err)
	}
}
