package rooms

import "testing"

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		glob, s string
		want    bool
	}{
		{"*", "", true},
		{"*", "matrix.org", true},
		{"matrix.org", "matrix.org", true},
		{"matrix.org", "matrix.org.evil", false},
		{"*.evil.com", "evil.com", false},
		{"*.evil.com", "a.b.evil.com", true},
		{"?.org", "a.org", true},
		{"?.org", "ab.org", false},
		{"?.org", ".org", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"**", "x", true},
		{"*?", "", false},
		{"é?.org", "éx.org", true},
		{"", "", true},
		{"", "x", false},
	} {
		if got := globMatch(c.glob, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", c.glob, c.s, got, c.want)
		}
	}
}

func TestParseServerACL(t *testing.T) {
	for _, c := range []struct {
		content string
		server  string
		want    bool
	}{
		// allow defaults to empty: nobody.
		{`{}`, "matrix.org", false},
		{`{"deny":["*"]}`, "matrix.org", false},
		// Deny wins over allow.
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{`{"allow":["*"],"deny":["evil.com"]}`, "evil.com.au", true},
		// Matching is case-insensitive, ports are ignored.
		{`{"allow":["Matrix.ORG"]}`, "matrix.org:8448", true},
		// allow_ip_literals: true unless the boolean false.
		{`{"allow":["*"]}`, "10.0.0.1", true},
		{`{"allow":["*"],"allow_ip_literals":"false"}`, "10.0.0.1", true},
		{`{"allow":["*"],"allow_ip_literals":false}`, "10.0.0.1:8448", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "[2001:db8::1]", false},
		{`{"allow":["*"],"allow_ip_literals":false}`, "10.example", true},
		// Lists of the wrong shape are empty; entries that are not strings are skipped.
		{`{"allow":"*"}`, "matrix.org", false},
		{`{"allow":[1,"matrix.org"]}`, "matrix.org", true},
		{`not json`, "matrix.org", false},
	} {
		if got := parseServerACL([]byte(c.content)).allows(c.server); got != c.want {
			t.Errorf("%s / %s: allowed = %v, want %v", c.content, c.server, got, c.want)
		}
	}
}

// FuzzServerACL feeds arbitrary ACL content and server names (both come
// from other servers) through the parser and the matcher.
func FuzzServerACL(f *testing.F) {
	f.Add([]byte(`{"allow":["*"],"deny":["*.evil.com"],"allow_ip_literals":false}`), "a.evil.com:8448")
	f.Add([]byte(`{"allow":["?*?"]}`), "[::1]")
	f.Fuzz(func(t *testing.T, content []byte, server string) {
		acl := parseServerACL(content)
		got := acl.allows(server)
		if len(acl.allow) == 0 && got {
			t.Fatalf("allowed %q with an empty allow list", server)
		}
		if !globMatch("*", server) {
			t.Fatalf("* does not match %q", server)
		}
	})
}
