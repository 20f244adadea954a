package rooms

import "testing"

// FuzzPublicRoomsToken checks that pagination tokens from clients never
// panic and that a parsed token survives printing and parsing again.
func FuzzPublicRoomsToken(f *testing.F) {
	f.Add("n3_!room:example.org")
	f.Add("p0_!a_b")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := parsePublicRoomsToken(s)
		if err != nil {
			return
		}
		if again, err := parsePublicRoomsToken(tok.String()); err != nil || again != tok {
			t.Fatalf("token %q prints as %q, which parses as %+v (%v)", s, tok.String(), again, err)
		}
	})
}
