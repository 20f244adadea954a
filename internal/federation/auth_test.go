package federation

import (
	"testing"
)

func TestParseXMatrix(t *testing.T) {
	want := XMatrix{Origin: "origin.example.org:8448", Destination: "dest.example.org", KeyID: "ed25519:a_1", Signature: "ABC/+def"}
	for _, h := range []string{
		`X-Matrix origin="origin.example.org:8448",destination="dest.example.org",key="ed25519:a_1",sig="ABC/+def"`,
		// Order, case, whitespace around commas and several spaces after the scheme.
		`x-matrix   KEY="ed25519:a_1" ,	Sig="ABC/+def" , Origin="origin.example.org:8448",destination="dest.example.org"`,
		// Unquoted values, colons included (older servers).
		`X-Matrix origin=origin.example.org:8448,destination=dest.example.org,key=ed25519:a_1,sig=ABC/+def`,
		// Backslash escapes, unknown parameters, empty list elements, the spec's "signature" name.
		`X-Matrix origin="origin.example.org:84\48",,destination="dest.example.org",future="x, \"y\"",key="ed25519:a_1",signature="ABC/+def"`,
		// Spaces around "=".
		`X-Matrix origin = "origin.example.org:8448", destination = dest.example.org, key = ed25519:a_1, sig = "ABC/+def"`,
	} {
		got, isX, err := ParseXMatrix(h)
		if err != nil || !isX || got != want {
			t.Errorf("%s:\n got %+v %v %v", h, got, isX, err)
		}
	}
	x, isX, err := ParseXMatrix(`X-Matrix origin=o.org,key=ed25519:k,sig=s`)
	if err != nil || !isX || x.Destination != "" {
		t.Errorf("without destination: %+v %v", x, err)
	}
	for _, h := range []string{"Bearer abc", "X-Matrixorigin=a", "", "Basic X-Matrix"} {
		if _, isX, err := ParseXMatrix(h); isX || err != nil {
			t.Errorf("%q: parsed as X-Matrix (%v)", h, err)
		}
	}
	for _, h := range []string{
		"X-Matrix", "X-Matrix ", `X-Matrix origin="o.org",key="ed25519:k"`, `X-Matrix key=k,sig=s`,
		`X-Matrix origin="o.org,key=k,sig=s`, `X-Matrix origin=,key=k,sig=s`, `X-Matrix origin`,
		`X-Matrix origin=a,origin=b,key=k,sig=s`, `X-Matrix origin="a"b,key=k,sig=s`, `X-Matrix =a`,
	} {
		if _, isX, err := ParseXMatrix(h); !isX || err == nil {
			t.Errorf("%q: accepted", h)
		}
	}
}

func TestFormatXMatrixRoundTrip(t *testing.T) {
	x := XMatrix{Origin: "a.org", Destination: "b.org:1", KeyID: "ed25519:k", Signature: `we"ird\`}
	got, _, err := ParseXMatrix(FormatXMatrix(x))
	if err != nil || got != x {
		t.Fatalf("%s → %+v %v", FormatXMatrix(x), got, err)
	}
}

func FuzzParseXMatrix(f *testing.F) {
	f.Add(`X-Matrix origin="a.org",destination="b.org",key="ed25519:k",sig="s"`)
	f.Add(`X-Matrix origin=a.org:1,key=ed25519:k,sig=s`)
	f.Add(`X-Matrix a="\"",,b=c`)
	f.Fuzz(func(t *testing.T, h string) {
		x, isX, err := ParseXMatrix(h)
		if err == nil && isX && (x.Origin == "" || x.KeyID == "" || x.Signature == "") {
			t.Fatalf("%q: incomplete %+v accepted", h, x)
		}
		if err == nil && isX {
			// What parses formats back to the same values.
			if again, _, err := ParseXMatrix(FormatXMatrix(x)); err != nil || again != x {
				t.Fatalf("%q: %+v does not round-trip: %+v %v", h, x, again, err)
			}
		}
	})
}
