package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Client is a minimal HTTP client for handler tests: raw requests, raw
// answers. End-to-end tests use mautrix-go instead.
type Client struct {
	t           testing.TB
	BaseURL     string
	UserID      string
	DeviceID    string
	AccessToken string
}

// Response is a decoded answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any // nil if the body is not a JSON object
}

// ErrCode is the errcode of an error response ("" if none).
func (r *Response) ErrCode() string {
	s, _ := r.JSON["errcode"].(string)
	return s
}

// Client returns an anonymous client of s.
func (s *Server) Client(t testing.TB) *Client { return &Client{t: t, BaseURL: s.URL} }

// NewUser creates an account directly in the store and logs it in, for
// tests that need a user but do not test registration.
func (s *Server) NewUser(t testing.TB, localpart, password string) *Client {
	t.Helper()
	ctx := context.Background()
	u, err := s.Accounts.CreateUser(ctx, localpart, password, false, false)
	if err != nil {
		t.Fatalf("create user %s: %v", localpart, err)
	}
	sess, err := s.Accounts.NewSession(ctx, u.UserID, "", "test device", "127.0.0.1", "testutil", false)
	if err != nil {
		t.Fatalf("session for %s: %v", localpart, err)
	}
	return &Client{t: t, BaseURL: s.URL, UserID: u.UserID, DeviceID: sess.DeviceID, AccessToken: sess.AccessToken}
}

// Do sends a request. body may be nil, a string or []byte (sent as is), or
// any other value (sent as JSON). The client's access token is sent when set.
func (c *Client) Do(method, path string, body any) *Response {
	c.t.Helper()
	return c.DoWithHeaders(method, path, body, nil)
}

// DoWithHeaders is Do with extra request headers.
func (c *Client) DoWithHeaders(method, path string, body any, hdr map[string]string) *Response {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.BaseURL+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.AccessToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AccessToken)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	out := &Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
	_ = json.Unmarshal(raw, &out.JSON)
	return out
}

// MustDo is Do that fails the test unless the status is want.
func (c *Client) MustDo(want int, method, path string, body any) *Response {
	c.t.Helper()
	r := c.Do(method, path, body)
	if r.Status != want {
		c.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.Status, want, r.Body)
	}
	return r
}
