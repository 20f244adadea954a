package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

// Limits of outbound requests.
const (
	// DefaultRequestTimeout applies when the caller's context has no
	// deadline.
	DefaultRequestTimeout = 60 * time.Second
	// DefaultMaxResponseBytes bounds a JSON response body. Joins of large
	// rooms return big state; a caller that needs more uses DoRaw.
	DefaultMaxResponseBytes = 64 << 20
	// maxErrorBytes bounds the body read from an error response.
	maxErrorBytes = 64 << 10
)

// Client makes requests to other homeservers. It finds them with the
// Resolver, connects through the address policy's dialer, verifies their
// TLS certificates (system roots plus federation.ca_file) and signs requests
// with the server's key (Authorization: X-Matrix).
//
// Connections are pooled per destination server name: a connection is only
// reused for the server name whose certificate it verified.
type Client struct {
	origin   string
	key      *SigningKey
	resolver *Resolver
	http     *http.Client

	// MaxResponseBytes bounds JSON response bodies read by Do.
	MaxResponseBytes int64

	mu    sync.Mutex
	hosts map[string]string // server name → synthetic URL host
	names map[string]string // synthetic URL host → server name
}

// RemoteError is a non-2xx answer of a remote server.
type RemoteError struct {
	Destination string
	Status      int
	ErrCode     string // "" when the body was not a Matrix error
	Message     string
}

func (e *RemoteError) Error() string {
	if e.ErrCode == "" {
		return fmt.Sprintf("%s answered %d", e.Destination, e.Status)
	}
	return fmt.Sprintf("%s answered %d %s: %s", e.Destination, e.Status, e.ErrCode, e.Message)
}

// tlsRoots returns the system roots plus the certificates of caFile.
func tlsRoots(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("federation.ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("federation.ca_file %s: no PEM certificate found", caFile)
	}
	return pool, nil
}

// NewClient returns a client that signs as origin with key.
func NewClient(origin string, key *SigningKey, resolver *Resolver, policy AddrPolicy, roots *x509.CertPool) *Client {
	c := &Client{
		origin:           origin,
		key:              key,
		resolver:         resolver,
		MaxResponseBytes: DefaultMaxResponseBytes,
		hosts:            map[string]string{},
		names:            map[string]string{},
	}
	dialer := policy.Dialer()
	tlsConf := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	c.http = &http.Client{
		Transport: &http.Transport{
			// Plain HTTP is never used: every URL is https.
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return nil, errors.New("federation: plain HTTP is not used")
			},
			DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return c.dialTLS(ctx, addr, dialer, tlsConf)
			},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		// Federation endpoints do not redirect; following one could leave
		// the destination that was authenticated.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// WebClient returns an HTTPS client for ordinary web requests to addresses
// chosen by others (.well-known lookups; later URL previews): it connects
// through the policy's dialer, trusts roots, follows at most five redirects
// and ignores proxy environment variables (a proxy would hide the real
// destination from the policy).
func WebClient(policy AddrPolicy, roots *x509.CertPool, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         policy.Dialer().DialContext,
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
}

// CloseIdleConnections closes the pooled connections that carry no request.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// urlHost returns the URL host standing for a server name. http.Transport
// pools connections by URL host; a synthetic host per server name keeps
// "example.org" and "example.org:443" (different discovery, possibly
// different certificates) apart.
func (c *Client) urlHost(serverName string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.hosts[serverName]
	if !ok {
		h = "d" + strconv.Itoa(len(c.hosts)) + ".federation.invalid"
		c.hosts[serverName], c.names[h] = h, serverName
	}
	return h
}

// dialTLS connects to the server a synthetic URL host stands for: it
// resolves the name, tries each address in turn through the policy's dialer
// and verifies the certificate against the name discovery chose.
func (c *Client) dialTLS(ctx context.Context, addr string, dialer *net.Dialer, base *tls.Config) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	serverName, ok := c.names[host]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("federation: unknown destination host %q", host)
	}
	dest, err := c.resolver.Resolve(ctx, serverName)
	if err != nil {
		return nil, err
	}
	conf := base.Clone()
	conf.ServerName = dest.TLSServerName
	var errs []error
	for _, a := range dest.Addrs {
		raw, err := dialer.DialContext(ctx, "tcp", a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		conn := tls.Client(raw, conf)
		if err := conn.HandshakeContext(ctx); err != nil {
			raw.Close()
			errs = append(errs, fmt.Errorf("TLS with %s (%s): %w", a, dest.TLSServerName, err))
			continue
		}
		return conn, nil
	}
	return nil, fmt.Errorf("no address of %s could be reached: %w", serverName, errors.Join(errs...))
}

// DoRaw sends a request to destination and returns the response as it
// comes; the caller closes its body. uri is the path with its query string
// ("/_matrix/federation/v1/version"). body, if not nil, is sent as JSON. The
// request is signed when sign is true.
func (c *Client) DoRaw(ctx context.Context, destination, method, uri string, body []byte, sign bool) (*http.Response, error) {
	if _, _, err := splitServerName(destination); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRequestTimeout)
		// The body outlives this call: cancel when it is closed.
		resp, err := c.doRaw(ctx, destination, method, uri, body, sign)
		if err != nil {
			cancel()
			return nil, err
		}
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
	return c.doRaw(ctx, destination, method, uri, body, sign)
}

func (c *Client) doRaw(ctx context.Context, destination, method, uri string, body []byte, sign bool) (*http.Response, error) {
	dest, err := c.resolver.Resolve(ctx, destination)
	if err != nil {
		return nil, err
	}
	var auth string
	if sign {
		if auth, err = c.authorization(destination, method, uri, body); err != nil {
			return nil, err
		}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+c.urlHost(destination)+uri, rd)
	if err != nil {
		return nil, err
	}
	if req.URL.RequestURI() != uri {
		return nil, fmt.Errorf("federation: request URI %q does not round-trip (got %q)", uri, req.URL.RequestURI())
	}
	req.Host = dest.Host
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error // names the synthetic host: say which server it was
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("federation: %s %s%s: %w", method, destination, uri, err)
	}
	return resp, nil
}

// authorization signs a request and returns its X-Matrix header.
func (c *Client) authorization(destination, method, uri string, body []byte) (string, error) {
	x, err := c.key.SignRequest(c.origin, destination, method, uri, body)
	if err != nil {
		return "", err
	}
	return FormatXMatrix(x), nil
}

// Do sends a signed JSON request and decodes the JSON answer into out (if
// not nil). body is marshalled to JSON unless nil. A non-2xx answer is a
// *RemoteError.
func (c *Client) Do(ctx context.Context, destination, method, uri string, body, out any) error {
	return c.do(ctx, destination, method, uri, body, out, true)
}

// Get sends an unsigned GET (the key endpoints need no authentication) and
// decodes the JSON answer into out.
func (c *Client) Get(ctx context.Context, destination, uri string, out any) error {
	return c.do(ctx, destination, http.MethodGet, uri, nil, out, false)
}

func (c *Client) do(ctx context.Context, destination, method, uri string, body, out any, sign bool) error {
	var raw []byte
	switch {
	case body != nil:
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	case method == http.MethodPost || method == http.MethodPut:
		raw = []byte("{}") // the spec wants a JSON object on every POST and PUT
	}
	resp, err := c.DoRaw(ctx, destination, method, uri, raw, sign)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return remoteError(destination, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.MaxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("federation: reading the answer of %s: %w", destination, err)
	}
	if int64(len(data)) > c.MaxResponseBytes {
		return fmt.Errorf("federation: the answer of %s is larger than %d bytes", destination, c.MaxResponseBytes)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("federation: bad JSON from %s: %w", destination, err)
	}
	return nil
}

func remoteError(destination string, resp *http.Response) error {
	e := &RemoteError{Destination: destination, Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var body struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(data, &body) == nil {
		e.ErrCode, e.Message = body.ErrCode, body.Error
	}
	return e
}

// cancelOnClose releases a request's timeout when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
