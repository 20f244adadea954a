package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Empty is the body of a successful response that carries nothing: {}.
var Empty = struct{}{}

// Response lets a handler choose the status code and extra headers of a
// successful JSON response.
type Response struct {
	Status int
	Header http.Header
	Body   any
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		slog.Error("encoding JSON response", "err", err)
		status = http.StatusInternalServerError
		buf = []byte(`{"errcode":"M_UNKNOWN","error":"Internal error encoding the response"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf)
}

// WriteError writes err as a Matrix error. An error that is not an *Error is
// the server's fault: it is logged and answered with 500 M_UNKNOWN.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var me *Error
	if !errors.As(err, &me) {
		if r.Context().Err() != nil {
			// The client went away (a long-poll cancelled, a closed tab):
			// nobody reads the answer and nothing is wrong with the server.
			slog.Debug("request abandoned by the client", "method", r.Method, "path", r.URL.Path, "err", err)
		} else {
			slog.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		me = Unknown("Internal server error")
	}
	WriteJSON(w, me.Status, me.body())
}

// DecodeJSON reads the request body as JSON into v. The body is limited by
// the router's body limit. It answers M_NOT_JSON for a body that is not JSON,
// M_BAD_JSON for JSON of the wrong shape and M_TOO_LARGE for a body over the
// limit.
func DecodeJSON(r *http.Request, v any) error {
	raw, err := ReadBody(r)
	if err != nil {
		return err
	}
	return UnmarshalJSON(raw, v)
}

// UnmarshalJSON decodes raw into v with DecodeJSON's error mapping.
func UnmarshalJSON(raw []byte, v any) error {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 {
		return NotJSON("Request body is empty; a JSON object is required")
	}
	if !json.Valid(trimmed) {
		return NotJSON("Request body is not valid JSON")
	}
	// JSON text is UTF-8 (RFC 8259); the decoder would let invalid bytes
	// through in raw values that are stored as they are.
	if !utf8.Valid(trimmed) {
		return NotJSON("Request body is not valid UTF-8")
	}
	if trimmed[0] != '{' {
		return BadJSON("Request body must be a JSON object")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				field = "body"
			}
			return BadJSON("Field %q has the wrong type: expected %s, got %s", field, te.Type, te.Value)
		}
		return BadJSON("Bad JSON: %v", err)
	}
	return nil
}

// ReadBody reads the whole request body within the body limit.
func ReadBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, TooLarge("Request body is larger than %d bytes", mbe.Limit)
		}
		return nil, BadJSON("Could not read the request body: %v", err)
	}
	return raw, nil
}

// DecodeOptionalJSON is DecodeJSON for endpoints whose body may be absent
// (an empty body decodes as {}).
func DecodeOptionalJSON(r *http.Request, v any) error {
	raw, err := ReadBody(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	return UnmarshalJSON(raw, v)
}

// QueryBool parses a boolean query parameter ("true"/"false"); def applies
// when it is absent.
func QueryBool(r *http.Request, name string, def bool) (bool, error) {
	v := r.URL.Query().Get(name)
	switch strings.ToLower(v) {
	case "":
		return def, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, InvalidParam("Query parameter %s must be true or false", name)
}
