package federation

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/httpx"
)

// Request authentication (the spec's "Request Authentication"): every
// federation request carries Authorization: X-Matrix origin=…,destination=…,
// key=…,sig=…, a signature by the origin server of the JSON object
// {method, uri, origin, destination, content}.

// XMatrix is the content of one Authorization: X-Matrix header.
type XMatrix struct {
	Origin      string
	Destination string // empty when an older server left it out
	KeyID       string
	Signature   string
}

// ParseXMatrix parses an Authorization header value. isXMatrix is false
// (and err nil) for other schemes. The syntax is RFC 9110's auth-param
// list: names are case-insensitive, values are tokens or quoted strings
// with backslash escapes, whitespace around commas is allowed, unknown
// parameters are ignored and, for older servers, unquoted values may
// contain colons.
func ParseXMatrix(header string) (x XMatrix, isXMatrix bool, err error) {
	scheme, rest, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "X-Matrix") {
		return XMatrix{}, false, nil
	}
	seen := map[string]bool{}
	for p := rest; ; {
		p = strings.TrimLeft(p, " \t,")
		if p == "" {
			break
		}
		end := strings.IndexAny(p, "= \t,")
		if end < 0 {
			end = len(p)
		}
		name, after := strings.ToLower(p[:end]), strings.TrimLeft(p[end:], " \t")
		if name == "" || !strings.HasPrefix(after, "=") {
			return XMatrix{}, true, fmt.Errorf("parameter %q has no value", strings.SplitN(p, ",", 2)[0])
		}
		p = strings.TrimLeft(after[1:], " \t")
		var value string
		if value, p, err = authParamValue(p); err != nil {
			return XMatrix{}, true, fmt.Errorf("parameter %s: %w", name, err)
		}
		if p = strings.TrimLeft(p, " \t"); p != "" && p[0] != ',' {
			return XMatrix{}, true, fmt.Errorf("parameter %s: junk after the value", name)
		}
		var field *string
		switch name {
		case "origin":
			field = &x.Origin
		case "destination":
			field = &x.Destination
		case "key":
			field = &x.KeyID
		case "sig", "signature":
			name, field = "sig", &x.Signature
		default:
			continue // unknown parameters are ignored
		}
		if seen[name] {
			return XMatrix{}, true, fmt.Errorf("parameter %s given twice", name)
		}
		seen[name], *field = true, value
	}
	switch {
	case x.Origin == "":
		return XMatrix{}, true, errors.New("origin is missing")
	case x.KeyID == "":
		return XMatrix{}, true, errors.New("key is missing")
	case x.Signature == "":
		return XMatrix{}, true, errors.New("sig is missing")
	}
	return x, true, nil
}

// FormatXMatrix formats an Authorization header value the way the spec
// asks senders to, for compatibility with older servers: one space after
// X-Matrix, lower-case names, quoted values, no spaces around commas.
func FormatXMatrix(x XMatrix) string {
	q := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	return "X-Matrix origin=" + q(x.Origin) + ",destination=" + q(x.Destination) + ",key=" + q(x.KeyID) + ",sig=" + q(x.Signature)
}

// requestJSON is the object a request signature covers. content is the
// request body (JSON), nil when there is none.
func requestJSON(method, uri, origin, destination string, content []byte) map[string]any {
	m := map[string]any{"method": method, "uri": uri, "origin": origin, "destination": destination}
	if content != nil {
		m["content"] = json.RawMessage(content)
	}
	return m
}

// SignRequest signs a federation request from origin to destination:
// method, uri (path and query, as sent) and content (the JSON body, nil for
// none). The result goes into an Authorization header with FormatXMatrix.
func (k *SigningKey) SignRequest(origin, destination, method, uri string, content []byte) (XMatrix, error) {
	message, err := json.Marshal(requestJSON(method, uri, origin, destination, content))
	if err != nil {
		return XMatrix{}, err
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(message)
	if err != nil {
		return XMatrix{}, err
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.Private, canonical))
	return XMatrix{Origin: origin, Destination: destination, KeyID: k.ID, Signature: sig}, nil
}

// authParamValue reads a token or a quoted string at the start of p and
// returns it with the rest of p.
func authParamValue(p string) (value, rest string, err error) {
	if !strings.HasPrefix(p, `"`) {
		end := strings.IndexAny(p, " \t,")
		if end < 0 {
			end = len(p)
		}
		if end == 0 {
			return "", "", errors.New("empty value")
		}
		return p[:end], p[end:], nil
	}
	var b strings.Builder
	for i := 1; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteByte(p[i])
		case c == '"':
			return b.String(), p[i+1:], nil
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated quoted string")
}

// unauthorized is the 401 M_UNAUTHORIZED answer to a request that fails
// authentication.
func unauthorized(format string, args ...any) *httpx.Error {
	return httpx.NewError(http.StatusUnauthorized, "M_UNAUTHORIZED", format, args...)
}

// Handler is an authenticated federation endpoint. origin is the server
// that signed the request; r's context carries it too (see Origin). The
// usual httpx conventions apply: return the value to encode as JSON, an
// *httpx.Response, or an error (an *httpx.Error for Matrix errors).
type Handler func(r *http.Request, origin string) (any, error)

type originKey struct{}

// Origin returns the authenticated origin server of a federation request's
// context, or "".
func Origin(ctx context.Context) string {
	s, _ := ctx.Value(originKey{}).(string)
	return s
}

// authenticated wraps a Handler with request authentication.
func (f *Federation) authenticated(h Handler) httpx.Handler {
	return func(r *http.Request) (any, error) {
		origin, err := f.authenticate(r)
		if err != nil {
			return nil, err
		}
		return h(r.WithContext(context.WithValue(r.Context(), originKey{}, origin)), origin)
	}
}

// authenticate checks a request's X-Matrix authorization and returns the
// origin. Afterwards the body can be read again by the handler.
func (f *Federation) authenticate(r *http.Request) (string, error) {
	var x *XMatrix
	sigs := map[string]string{}
	for _, h := range r.Header.Values("Authorization") {
		parsed, isXMatrix, err := ParseXMatrix(h)
		if !isXMatrix {
			continue
		}
		if err != nil {
			return "", unauthorized("Malformed X-Matrix Authorization header: %v", err)
		}
		if x != nil && (parsed.Origin != x.Origin || parsed.Destination != x.Destination) {
			return "", unauthorized("X-Matrix Authorization headers disagree on origin or destination")
		}
		x = &parsed
		sigs[parsed.KeyID] = parsed.Signature
	}
	if x == nil {
		return "", unauthorized("Missing X-Matrix Authorization header")
	}
	if _, _, err := splitServerName(x.Origin); err != nil {
		return "", unauthorized("Bad origin: %v", err)
	}
	if x.Destination != "" && x.Destination != f.serverName {
		return "", unauthorized("This server is %s, not %s", f.serverName, x.Destination)
	}
	raw, err := httpx.ReadBody(r)
	if err != nil {
		return "", err
	}
	var content []byte
	if len(bytes.TrimSpace(raw)) > 0 {
		if !json.Valid(raw) {
			return "", httpx.NotJSON("Request body is not valid JSON")
		}
		content = raw
	}
	signed := requestJSON(r.Method, requestTarget(r), x.Origin, f.serverName, content)
	signed["signatures"] = map[string]map[string]string{x.Origin: sigs}
	message, err := json.Marshal(signed)
	if err != nil {
		return "", err
	}
	if err := f.KeyRing.verifyRequest(r.Context(), x.Origin, message); err != nil {
		if errors.Is(err, ErrNoKey) || errors.Is(err, ErrBadSignature) {
			slog.Debug("federation request refused", "origin", x.Origin, "path", r.URL.Path, "err", err)
			return "", unauthorized("Request signature of %s does not verify: %v", x.Origin, err)
		}
		return "", err
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	return x.Origin, nil
}

// requestTarget is the request target as the client sent it (path and
// query), which is what the origin signed.
func requestTarget(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}
