package federation

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// AddrPolicy decides which IP addresses Palpo's outbound connections may
// reach. It guards against server-side request forgery: a remote server name,
// a .well-known delegation, an SRV record or (later) a URL to preview must not
// make Palpo connect to its own loopback interface, to the private network
// it runs in or to a cloud metadata service.
//
// The check runs in the dialer's Control hook, on the address actually being
// connected to, after DNS resolution: a name that resolves to a public
// address when checked and to a private one when dialled (DNS rebinding)
// cannot get through, and neither can any later step (redirects, SRV
// targets) that goes through the same dialer.
type AddrPolicy struct {
	// AllowPrivate lets connections reach the non-public ranges (loopback,
	// private, link-local, unspecified …). For test networks and for
	// federations that live entirely on a private network.
	AllowPrivate bool
	// Allow lists ranges that may be reached even though they are not public.
	Allow []netip.Prefix
	// Deny lists ranges that may never be reached, whatever else says.
	Deny []netip.Prefix
}

// nonPublic are the ranges that are not reachable public unicast addresses:
// the IANA special-purpose registries for IPv4 and IPv6, plus multicast.
var nonPublic = mustPrefixes(
	"0.0.0.0/8",       // "this network", includes the unspecified address
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, cloud metadata services
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, includes broadcast
	"::/128",          // unspecified
	"::1/128",         // loopback
	"100::/64",        // discard-only
	"2001::/23",       // IETF protocol assignments
	"2001:db8::/32",   // documentation
	"fc00::/7",        // unique local (private)
	"fe80::/10",       // link-local
	"fec0::/10",       // deprecated site-local
	"ff00::/8",        // multicast
)

// nat64 is the well-known NAT64 prefix: its addresses embed an IPv4 address
// in the last 32 bits, which is what the connection really reaches.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// IsPublic reports whether ip is a public unicast address.
func IsPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return false
	}
	if ip.Is6() && nat64.Contains(ip) {
		b := ip.As16()
		return IsPublic(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// Permits reports whether a connection to ip is allowed.
func (p AddrPolicy) Permits(ip netip.Addr) bool {
	ip = ip.Unmap()
	if inAny(ip, p.Deny) {
		return false
	}
	return p.AllowPrivate || IsPublic(ip) || inAny(ip, p.Allow)
}

func inAny(ip netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// BlockedAddressError is the error of a connection the policy refused.
type BlockedAddressError struct {
	Addr string // the ip:port that was refused
}

func (e *BlockedAddressError) Error() string {
	return fmt.Sprintf("outbound connection to %s refused: not a public address (federation.allow_private is off)", e.Addr)
}

// Dialer returns a dialer whose connections obey the policy. It is meant to
// be shared by everything that connects to addresses chosen by others:
// federation, .well-known lookups, remote media, URL previews.
func (p AddrPolicy) Dialer() *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		ControlContext: func(_ context.Context, network, address string, _ syscall.RawConn) error {
			return p.check(network, address)
		},
	}
}

// check is the Control hook: address is the literal ip:port about to be
// connected to.
func (p AddrPolicy) check(network, address string) error {
	switch network {
	case "tcp4", "tcp6", "udp4", "udp6":
	default:
		return fmt.Errorf("outbound connection over %s refused", network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("outbound connection to %q refused: %v", address, err)
	}
	if !p.Permits(ap.Addr()) {
		return &BlockedAddressError{Addr: address}
	}
	return nil
}
