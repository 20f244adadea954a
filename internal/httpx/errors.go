// Package httpx is the HTTP plumbing shared by every Palpo API: JSON in and
// out, Matrix errors, access-token authentication, rate limits, CORS, body
// limits and panic recovery.
package httpx

import (
	"fmt"
	"net/http"
	"time"
)

// Error is a Matrix error response: an HTTP status, an errcode and a message,
// plus optional extra fields (soft_logout, retry_after_ms, flows …).
type Error struct {
	Status  int
	ErrCode string
	Message string
	Extra   map[string]any
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.ErrCode, e.Message) }

// body is the JSON body of the error.
func (e *Error) body() map[string]any {
	m := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		m[k] = v
	}
	// A UIA challenge (401 with flows) carries no errcode until a stage fails.
	if e.ErrCode != "" {
		m["errcode"] = e.ErrCode
		m["error"] = e.Message
	}
	return m
}

// With returns a copy of e with an extra field set.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k, v := range e.Extra {
		c.Extra[k] = v
	}
	c.Extra[key] = value
	return &c
}

// NewError builds an Error with a formatted message.
func NewError(status int, errcode, format string, args ...any) *Error {
	return &Error{Status: status, ErrCode: errcode, Message: fmt.Sprintf(format, args...)}
}

// Constructors for the errors the spec defines. Each takes a printf format.

// Unrecognized is 404 M_UNRECOGNIZED: an endpoint the server does not know.
func Unrecognized(format string, a ...any) *Error {
	return NewError(http.StatusNotFound, "M_UNRECOGNIZED", format, a...)
}

// NotFound is 404 M_NOT_FOUND.
func NotFound(format string, a ...any) *Error {
	return NewError(http.StatusNotFound, "M_NOT_FOUND", format, a...)
}

// Forbidden is 403 M_FORBIDDEN.
func Forbidden(format string, a ...any) *Error {
	return NewError(http.StatusForbidden, "M_FORBIDDEN", format, a...)
}

// NotJSON is 400 M_NOT_JSON: the body is not valid JSON.
func NotJSON(format string, a ...any) *Error {
	return NewError(http.StatusBadRequest, "M_NOT_JSON", format, a...)
}

// BadJSON is 400 M_BAD_JSON: valid JSON of the wrong shape.
func BadJSON(format string, a ...any) *Error {
	return NewError(http.StatusBadRequest, "M_BAD_JSON", format, a...)
}

// MissingParam is 400 M_MISSING_PARAM.
func MissingParam(format string, a ...any) *Error {
	return NewError(http.StatusBadRequest, "M_MISSING_PARAM", format, a...)
}

// InvalidParam is 400 M_INVALID_PARAM.
func InvalidParam(format string, a ...any) *Error {
	return NewError(http.StatusBadRequest, "M_INVALID_PARAM", format, a...)
}

// MissingToken is 401 M_MISSING_TOKEN.
func MissingToken() *Error {
	return NewError(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
}

// UnknownToken is 401 M_UNKNOWN_TOKEN; softLogout marks a token that expired
// (the client may refresh or log in again keeping its device).
func UnknownToken(softLogout bool) *Error {
	e := NewError(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown or expired access token")
	if softLogout {
		return e.With("soft_logout", true)
	}
	return e
}

// LimitExceeded is 429 M_LIMIT_EXCEEDED with retry_after_ms.
func LimitExceeded(retry time.Duration) *Error {
	ms := retry.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return NewError(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests").With("retry_after_ms", ms)
}

// TooLarge is 413 M_TOO_LARGE.
func TooLarge(format string, a ...any) *Error {
	return NewError(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, a...)
}

// Unknown is 500 M_UNKNOWN, for failures that are the server's fault.
func Unknown(format string, a ...any) *Error {
	return NewError(http.StatusInternalServerError, "M_UNKNOWN", format, a...)
}
