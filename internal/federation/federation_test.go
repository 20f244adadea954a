package federation_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/federation"
	"github.com/palpo-go/palpo/internal/httpx"
	"github.com/palpo-go/palpo/internal/testutil"
)

// echoPath is a test-only authenticated federation route.
const echoPath = "/_matrix/federation/unstable/org.palpo.test/echo/"

// registerEcho adds the echo route to s: it answers the authenticated
// origin, the path value and the JSON body it received.
func registerEcho(s *testutil.Server) {
	s.Federation.Handle("POST "+echoPath+"{id}", func(r *http.Request, origin string) (any, error) {
		var body map[string]any
		if err := httpx.DecodeJSON(r, &body); err != nil {
			return nil, err
		}
		return map[string]any{"origin": origin, "ctx_origin": federation.Origin(r.Context()), "id": r.PathValue("id"), "body": body}, nil
	})
}

// verifySigned checks that raw is signed by signer with key.
func verifySigned(t *testing.T, raw []byte, signer string, key *federation.SigningKey) {
	t.Helper()
	if err := gomatrixserverlib.VerifyJSON(signer, gomatrixserverlib.KeyID(key.ID), key.Public(), raw); err != nil {
		t.Fatalf("not signed by %s %s: %v\n%s", signer, key.ID, err, raw)
	}
}

func TestServerKeys(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		dir := t.TempDir()
		oldPub, _, _ := ed25519.GenerateKey(rand.Reader)
		oldLine := "# retired in 2024\ned25519:old1 " + base64.RawStdEncoding.EncodeToString(oldPub) + " 1700000000000\n"
		if err := os.WriteFile(filepath.Join(dir, federation.OldKeysFile), []byte(oldLine), 0o600); err != nil {
			t.Fatal(err)
		}
		s := testutil.Start(t, b, func(c *config.Config) { c.DataDir = dir })
		res := s.Client(t).Do("GET", "/_matrix/key/v2/server", nil)
		if res.Status != 200 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		verifySigned(t, res.Body, s.Config.ServerName, s.SigningKey)
		var keys struct {
			ServerName    string                          `json:"server_name"`
			ValidUntilTS  int64                           `json:"valid_until_ts"`
			VerifyKeys    map[string]struct{ Key string } `json:"verify_keys"`
			OldVerifyKeys map[string]struct {
				Key       string
				ExpiredTS int64 `json:"expired_ts"`
			} `json:"old_verify_keys"`
		}
		if err := json.Unmarshal(res.Body, &keys); err != nil {
			t.Fatal(err)
		}
		if keys.ServerName != s.Config.ServerName {
			t.Errorf("server_name %q", keys.ServerName)
		}
		if got := keys.VerifyKeys[s.SigningKey.ID].Key; got != base64.RawStdEncoding.EncodeToString(s.SigningKey.Public()) {
			t.Errorf("verify_keys %v", keys.VerifyKeys)
		}
		if until := time.UnixMilli(keys.ValidUntilTS); until.Before(time.Now().Add(6*24*time.Hour)) || until.After(time.Now().Add(7*24*time.Hour+time.Minute)) {
			t.Errorf("valid_until_ts %v is not a week ahead", until)
		}
		old := keys.OldVerifyKeys["ed25519:old1"]
		if old.Key != base64.RawStdEncoding.EncodeToString(oldPub) || old.ExpiredTS != 1700000000000 {
			t.Errorf("old_verify_keys %v", keys.OldVerifyKeys)
		}
	})
}

func TestVersion(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		res := testutil.Start(t, b).Client(t).Do("GET", "/_matrix/federation/v1/version", nil)
		server, _ := res.JSON["server"].(map[string]any)
		if res.Status != 200 || server["name"] != "Palpo" || server["version"] == "" {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
	})
}

// TestTwoServers runs two servers federating over loopback TLS: hs1 fetches
// hs2's keys, and makes signed requests to hs2 that hs2 authenticates.
func TestTwoServers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		network := testutil.NewNetwork(t, "hs1", "hs2")
		hs1 := network.Start(t, b, "hs1")
		hs2 := network.Start(t, b, "hs2")
		registerEcho(hs2)

		t.Run("key ring fetches and verifies keys", func(t *testing.T) {
			key, err := hs1.Federation.KeyRing.Key(ctx, "hs2", hs2.SigningKey.ID, time.Now(), func(k federation.VerifyKey) bool { return k.ValidAt(time.Now(), true) })
			if err != nil {
				t.Fatal(err)
			}
			if !key.Public.Equal(hs2.SigningKey.Public()) || key.Old() || key.ValidUntil.Before(time.Now().Add(6*24*time.Hour)) {
				t.Fatalf("key %+v", key)
			}
			signed := signJSON(t, "hs2", hs2.SigningKey, `{"hello":"world"}`)
			if err := hs1.Federation.KeyRing.VerifyJSON(ctx, "hs2", signed, time.Now(), true); err != nil {
				t.Fatal(err)
			}
			forged := signJSON(t, "hs2", &federation.SigningKey{ID: hs2.SigningKey.ID, Private: newKey(t)}, `{"hello":"world"}`)
			if err := hs1.Federation.KeyRing.VerifyJSON(ctx, "hs2", forged, time.Now(), true); !errors.Is(err, federation.ErrBadSignature) {
				t.Fatalf("forged signature: %v", err)
			}
		})

		t.Run("signed request to version", func(t *testing.T) {
			var out struct {
				Server struct{ Name, Version string }
			}
			if err := hs1.Federation.Client.Do(ctx, "hs2", "GET", "/_matrix/federation/v1/version", nil, &out); err != nil {
				t.Fatal(err)
			}
			if out.Server.Name != "Palpo" {
				t.Fatalf("%+v", out)
			}
		})

		t.Run("signed request to an authenticated route", func(t *testing.T) {
			var out map[string]any
			uri := echoPath + "%24event%3Ahs1?limit=3&v=a%20b"
			if err := hs1.Federation.Client.Do(ctx, "hs2", "POST", uri, map[string]any{"hello": "wörld"}, &out); err != nil {
				t.Fatal(err)
			}
			body, _ := out["body"].(map[string]any)
			if out["origin"] != "hs1" || out["ctx_origin"] != "hs1" || out["id"] != "$event:hs1" || body["hello"] != "wörld" {
				t.Fatalf("%v", out)
			}
		})

		t.Run("remote errors", func(t *testing.T) {
			err := hs1.Federation.Client.Do(ctx, "hs2", "GET", "/_matrix/federation/v1/nonexistent", nil, nil)
			var re *federation.RemoteError
			if !errors.As(err, &re) || re.Status != 404 || re.ErrCode != "M_UNRECOGNIZED" {
				t.Fatalf("%v", err)
			}
		})

		t.Run("forged requests are refused", func(t *testing.T) {
			testForgedRequests(t, hs1, hs2)
		})

		t.Run("notary", func(t *testing.T) {
			testNotary(t, hs1, hs2)
		})

		t.Run("keys persist", func(t *testing.T) {
			// A second federation layer on hs1's database, which cannot
			// reach hs2, still knows hs2's keys.
			cfg := *hs1.Config
			cfg.Federation.Resolve = "hs2=127.0.0.1:1"
			f, err := federation.New(&cfg, hs1.DB, hs1.SigningKey)
			if err != nil {
				t.Fatal(err)
			}
			signed := signJSON(t, "hs2", hs2.SigningKey, `{"persisted":true}`)
			if err := f.KeyRing.VerifyJSON(ctx, "hs2", signed, time.Now(), true); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// testForgedRequests sends hand-made requests to hs2's echo route.
func testForgedRequests(t *testing.T, hs1, hs2 *testutil.Server) {
	const uri = echoPath + "x"
	body := []byte(`{"a":1}`)
	sign := func(key *federation.SigningKey, origin, destination string, content []byte) string {
		x, err := key.SignRequest(origin, destination, "POST", uri, content)
		if err != nil {
			t.Fatal(err)
		}
		return federation.FormatXMatrix(x)
	}
	unknownKey := &federation.SigningKey{ID: "ed25519:unknown", Private: hs1.SigningKey.Private}
	wrongKey := &federation.SigningKey{ID: hs1.SigningKey.ID, Private: newKey(t)}
	cases := []struct {
		name   string
		header string
		body   []byte
		status int
		code   string
	}{
		{"well signed", sign(hs1.SigningKey, "hs1", "hs2", body), body, 200, ""},
		{"without destination", strings.Replace(sign(hs1.SigningKey, "hs1", "hs2", body), `,destination="hs2"`, "", 1), body, 200, ""},
		{"no header", "", body, 401, "M_UNAUTHORIZED"},
		{"bearer token", "Bearer abc", body, 401, "M_UNAUTHORIZED"},
		{"malformed header", `X-Matrix origin="hs1",key=`, body, 401, "M_UNAUTHORIZED"},
		{"bad signature", sign(wrongKey, "hs1", "hs2", body), body, 401, "M_UNAUTHORIZED"},
		{"wrong destination", sign(hs1.SigningKey, "hs1", "hs3", body), body, 401, "M_UNAUTHORIZED"},
		{"unknown key", sign(unknownKey, "hs1", "hs2", body), body, 401, "M_UNAUTHORIZED"},
		{"unreachable origin", sign(hs1.SigningKey, "127.0.0.1:1", "hs2", body), body, 401, "M_UNAUTHORIZED"},
		{"bad origin", sign(hs1.SigningKey, "bad origin!", "hs2", body), body, 401, "M_UNAUTHORIZED"},
		{"tampered body", sign(hs1.SigningKey, "hs1", "hs2", body), []byte(`{"a":2}`), 401, "M_UNAUTHORIZED"},
		{"body not JSON", sign(hs1.SigningKey, "hs1", "hs2", body), []byte(`{"a":`), 400, "M_NOT_JSON"},
	}
	c := hs2.Client(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"Content-Type": "application/json"}
			if tc.header != "" {
				hdr["Authorization"] = tc.header
			}
			res := c.DoWithHeaders("POST", uri, tc.body, hdr)
			if res.Status != tc.status || res.ErrCode() != tc.code {
				t.Fatalf("status %d %s, want %d %s: %s", res.Status, res.ErrCode(), tc.status, tc.code, res.Body)
			}
			if tc.status == 200 && res.JSON["origin"] != "hs1" {
				t.Fatalf("origin: %s", res.Body)
			}
		})
	}
}

// testNotary asks hs2, as a notary, for hs1's keys and its own.
func testNotary(t *testing.T, hs1, hs2 *testutil.Server) {
	c := hs2.Client(t)
	check := func(t *testing.T, res *testutil.Response, signer string, key *federation.SigningKey) {
		t.Helper()
		var answer struct {
			ServerKeys []json.RawMessage `json:"server_keys"`
		}
		if res.Status != 200 || json.Unmarshal(res.Body, &answer) != nil || len(answer.ServerKeys) != 1 {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
		verifySigned(t, answer.ServerKeys[0], signer, key)           // the server's own signature
		verifySigned(t, answer.ServerKeys[0], "hs2", hs2.SigningKey) // the notary's
	}
	t.Run("batch", func(t *testing.T) {
		res := c.Do("POST", "/_matrix/key/v2/query", map[string]any{"server_keys": map[string]any{
			"hs1":               map[string]any{hs1.SigningKey.ID: map[string]any{"minimum_valid_until_ts": time.Now().UnixMilli()}},
			"not a server name": map[string]any{},
		}})
		check(t, res, "hs1", hs1.SigningKey)
	})
	t.Run("single", func(t *testing.T) {
		check(t, c.Do("GET", "/_matrix/key/v2/query/hs1?minimum_valid_until_ts=1", nil), "hs1", hs1.SigningKey)
		check(t, c.Do("GET", "/_matrix/key/v2/query/hs2", nil), "hs2", hs2.SigningKey)
	})
	t.Run("unknown server", func(t *testing.T) {
		res := c.Do("GET", "/_matrix/key/v2/query/127.0.0.1:1", nil)
		if res.Status != 200 || string(res.Body) != `{"server_keys":[]}` {
			t.Fatalf("status %d: %s", res.Status, res.Body)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct{ method, path, body, code string }{
			{"GET", "/_matrix/key/v2/query/bad%20name", "", "M_INVALID_PARAM"},
			{"GET", "/_matrix/key/v2/query/hs1?minimum_valid_until_ts=soon", "", "M_INVALID_PARAM"},
			{"POST", "/_matrix/key/v2/query", "{}", "M_BAD_JSON"},
			{"POST", "/_matrix/key/v2/query", `{"server_keys":[]}`, "M_BAD_JSON"},
			{"POST", "/_matrix/key/v2/query", `{"server_keys":`, "M_NOT_JSON"},
		} {
			var body any
			if tc.body != "" {
				body = tc.body
			}
			if res := c.Do(tc.method, tc.path, body); res.Status != 400 || res.ErrCode() != tc.code {
				t.Errorf("%s %s %s: status %d: %s", tc.method, tc.path, tc.body, res.Status, res.Body)
			}
		}
	})
}

// TestTrustedKeyServers checks that a server that cannot reach another
// one gets its keys through a notary, pinned or not.
func TestTrustedKeyServers(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		ctx := context.Background()
		network := testutil.NewNetwork(t, "hs1", "hs2", "notary", "other")
		notary := network.Start(t, b, "notary")
		other := network.Start(t, b, "other")
		pinned := "notary=" + notary.SigningKey.ID + ":" + base64.RawStdEncoding.EncodeToString(notary.SigningKey.Public())
		for _, tc := range []struct{ name, trusted string }{{"hs1", pinned}, {"hs2", "notary"}} {
			t.Run(tc.trusted, func(t *testing.T) {
				s := network.Start(t, b, tc.name, func(c *config.Config) {
					// "other" cannot be reached directly from this server.
					c.Federation.Resolve += ",other=127.0.0.1:1"
					c.Federation.TrustedKeyServers = tc.trusted
				})
				signed := signJSON(t, "other", other.SigningKey, `{"via":"notary"}`)
				if err := s.Federation.KeyRing.VerifyJSON(ctx, "other", signed, time.Now(), true); err != nil {
					t.Fatal(err)
				}
			})
		}
	})
}

// TestAllowPrivateOff checks the SSRF guard end to end: with
// federation.allow_private off, a server refuses to connect to loopback.
func TestAllowPrivateOff(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		network := testutil.NewNetwork(t, "hs1", "hs2")
		network.Start(t, b, "hs2")
		hs1 := network.Start(t, b, "hs1", func(c *config.Config) { c.Federation.AllowPrivate = false })
		err := hs1.Federation.Client.Get(context.Background(), "hs2", "/_matrix/federation/v1/version", nil)
		var blocked *federation.BlockedAddressError
		if !errors.As(err, &blocked) || blocked.Addr != network.Addr("hs2") {
			t.Fatalf("want a BlockedAddressError for %s, got %v", network.Addr("hs2"), err)
		}
	})
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func signJSON(t *testing.T, signer string, key *federation.SigningKey, message string) []byte {
	t.Helper()
	signed, err := gomatrixserverlib.SignJSON(signer, gomatrixserverlib.KeyID(key.ID), key.Private, []byte(message))
	if err != nil {
		t.Fatal(err)
	}
	return signed
}
