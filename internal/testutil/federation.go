package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/config"
)

// CA is a throwaway certificate authority for tests that federate over
// TLS: servers present certificates it issued, and trust it through
// federation.ca_file.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	// File is the CA certificate in PEM, for federation.ca_file.
	File string
}

var serials atomic.Int64

// NewCA makes a CA whose files live in a temporary directory of the test.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serials.Add(1)),
		Subject:               pkix.Name{CommonName: "Palpo test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{cert: cert, key: key, dir: t.TempDir()}
	ca.File = writePEM(t, ca.dir, "ca.pem", "CERTIFICATE", der)
	return ca
}

// Issue makes a certificate for names (host names or IP addresses) and
// returns its PEM certificate and key files.
func (ca *CA) Issue(t testing.TB, names ...string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial := serials.Add(1)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	base := strings.NewReplacer(":", "_", "/", "_").Replace(names[0]) + "-" + big.NewInt(serial).String()
	return writePEM(t, ca.dir, base+".crt", "CERTIFICATE", der), writePEM(t, ca.dir, base+".key", "EC PRIVATE KEY", keyDER)
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Network is a set of test servers that federate over loopback TLS, the
// way Complement runs servers named hs1, hs2 …: each name gets a TLS
// federation listener, opened up front so that every server's
// federation.resolve can map every name to its address.
type Network struct {
	// CA issued the servers' certificates.
	CA        *CA
	listeners map[string]net.Listener
	resolve   string
	servers   []*Server
}

// NewNetwork opens a federation listener for each server name.
func NewNetwork(t testing.TB, names ...string) *Network {
	t.Helper()
	n := &Network{CA: NewCA(t), listeners: map[string]net.Listener{}}
	var resolve []string
	for _, name := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() }) // in case its server never starts
		n.listeners[name] = ln
		resolve = append(resolve, name+"="+ln.Addr().String())
	}
	n.resolve = strings.Join(resolve, ",")
	return n
}

// Addr is the federation listener address of the server called name.
func (n *Network) Addr(name string) string { return n.listeners[name].Addr().String() }

// Start starts the server called name with backend b. It serves the
// federation API over TLS with a certificate of the network's CA;
// federation.resolve maps every name of the network to its listener,
// federation.ca_file trusts the CA and federation.allow_private is on (the
// servers live on loopback). opts apply after these settings.
func (n *Network) Start(t testing.TB, b Backend, name string, opts ...Option) *Server {
	t.Helper()
	ln, ok := n.listeners[name]
	if !ok {
		t.Fatalf("server %q is not part of the network", name)
	}
	certFile, keyFile := n.CA.Issue(t, name)
	setup := func(c *config.Config) {
		c.ServerName = name
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.Federation.Listen = ln.Addr().String()
		c.Federation.CAFile = n.CA.File
		c.Federation.Resolve = n.resolve
		c.Federation.AllowPrivate = true
	}
	s := start(t, b, ln, append([]Option{setup}, opts...)...)
	n.servers = append(n.servers, s)
	// Before this server stops, the others drop their idle connections to
	// it; otherwise its HTTP/2 graceful shutdown waits a second for them.
	t.Cleanup(func() {
		for _, other := range n.servers {
			other.Federation.Client.CloseIdleConnections()
		}
	})
	return s
}
