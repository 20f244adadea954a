package federation

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestAddrPolicy(t *testing.T) {
	private := []string{
		"127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1", "255.255.255.255",
		"::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
	}
	public := []string{"8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"}
	var def AddrPolicy
	for _, s := range private {
		if ip := netip.MustParseAddr(s); def.Permits(ip) || IsPublic(ip) {
			t.Errorf("%s is permitted by default", s)
		}
		if !(AddrPolicy{AllowPrivate: true}).Permits(netip.MustParseAddr(s)) {
			t.Errorf("%s is refused with AllowPrivate", s)
		}
	}
	for _, s := range public {
		if !def.Permits(netip.MustParseAddr(s)) {
			t.Errorf("%s is refused", s)
		}
	}
	p := AddrPolicy{
		AllowPrivate: true,
		Deny:         []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")},
	}
	if p.Permits(netip.MustParseAddr("8.8.8.8")) {
		t.Error("Deny does not win over AllowPrivate")
	}
	p = AddrPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if !p.Permits(netip.MustParseAddr("10.9.9.9")) || p.Permits(netip.MustParseAddr("192.168.0.1")) {
		t.Error("Allow is not applied to its range only")
	}
}

// TestDialerRefusesLoopback dials a real loopback listener: by address and
// by a name that resolves to it. The check happens on the address being
// connected to, after name resolution.
func TestDialerRefusesLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, addr := range []string{ln.Addr().String(), net.JoinHostPort("localhost", port)} {
		_, err := AddrPolicy{}.Dialer().Dial("tcp", addr)
		var blocked *BlockedAddressError
		if !errors.As(err, &blocked) {
			t.Errorf("dial %s: want a BlockedAddressError, got %v", addr, err)
		}
	}
	c, err := AddrPolicy{AllowPrivate: true}.Dialer().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("with AllowPrivate: %v", err)
	}
	c.Close()
}
