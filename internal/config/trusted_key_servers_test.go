package config

import (
	"strings"
	"testing"
)

func TestTrustedKeyServers(t *testing.T) {
	const key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"
	c := Default()
	c.Federation.TrustedKeyServers = " matrix.org=ed25519:auto:" + key + ", notary.example:8448 ,matrix.org=ed25519:a_2:" + key + "="
	got, err := c.TrustedKeyServers()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ServerName != "matrix.org" || len(got[0].Keys) != 2 || len(got[0].Keys["ed25519:auto"]) != 32 ||
		got[1].ServerName != "notary.example:8448" || len(got[1].Keys) != 0 {
		t.Fatalf("%+v", got)
	}
	for _, bad := range []string{
		"bad name!",
		"matrix.org=" + key,
		"matrix.org=ed25519::" + key,
		"matrix.org=ed25519:a-b:" + key,
		"matrix.org=curve25519:a:" + key,
		"matrix.org=ed25519:a:AAAA",
		"matrix.org=ed25519:a:not base64!",
	} {
		c.Federation.TrustedKeyServers = bad
		if _, err := c.TrustedKeyServers(); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "federation.trusted_key_servers") {
			t.Errorf("%q: Validate: %v", bad, err)
		}
	}
}
