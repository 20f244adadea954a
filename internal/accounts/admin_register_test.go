package accounts_test

import (
	"context"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/config"
	"github.com/palpo-go/palpo/internal/testutil"
)

const sharedSecretPath = "/_synapse/admin/v1/register"

// TestRegistrationMACVector pins the MAC to Synapse's algorithm: the
// expected value was computed with Python's hmac module over
// b"nonce\x00alice\x00password\x00admin", as Synapse does.
func TestRegistrationMACVector(t *testing.T) {
	got := hex.EncodeToString(accounts.RegistrationMAC("secret", "nonce", "alice", "password", true))
	if got != "013c5738fc920e1110110046fc346bb5e30c53f2" {
		t.Fatalf("MAC %s", got)
	}
	if hex.EncodeToString(accounts.RegistrationMAC("secret", "nonce", "alice", "password", false)) == got {
		t.Fatal("the admin flag does not change the MAC")
	}
}

// nonce fetches a shared-secret registration nonce.
func nonce(t *testing.T, c *testutil.Client) string {
	t.Helper()
	n, _ := c.MustDo(http.StatusOK, "GET", sharedSecretPath, nil).JSON["nonce"].(string)
	if n == "" {
		t.Fatal("empty nonce")
	}
	return n
}

// sharedSecretBody builds a request signed with secret.
func sharedSecretBody(secret, nonce, username, password string, admin bool) map[string]any {
	return map[string]any{
		"nonce": nonce, "username": username, "password": password, "admin": admin,
		"mac": hex.EncodeToString(accounts.RegistrationMAC(secret, nonce, username, password, admin)),
	}
}

func TestSharedSecretRegister(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		// Shared-secret registration works whatever the registration mode.
		srv := testutil.Start(t, b, withRegistration(config.RegistrationClosed))
		secret := srv.Config.RegistrationSharedSecret
		ctx := context.Background()
		c := srv.Client(t)

		n := nonce(t, c)
		req := sharedSecretBody(secret, n, "Root", "s3cret", true)
		req["displayname"] = "The Admin"
		r := c.MustDo(http.StatusOK, "POST", sharedSecretPath, req)
		uid := "@root:" + srv.Config.ServerName
		if r.JSON["user_id"] != uid || r.JSON["home_server"] != srv.Config.ServerName || r.JSON["device_id"] == nil {
			t.Fatalf("shared-secret answer: %s", r.Body)
		}
		wantTokenWorks(t, srv, r.JSON["access_token"].(string))
		u, err := srv.Accounts.GetUser(ctx, uid)
		if err != nil || u == nil || !u.IsAdmin {
			t.Fatalf("admin account: %+v %v", u, err)
		}
		var dn string
		if err := srv.DB.QueryRow(ctx, `SELECT displayname FROM profiles WHERE user_id = $1`, uid).Scan(&dn); err != nil || dn != "The Admin" {
			t.Fatalf("displayname %q %v", dn, err)
		}

		// A nonce is single use.
		r = c.Do("POST", sharedSecretPath, sharedSecretBody(secret, n, "other", "pw", false))
		wantError(t, "reused nonce", r, http.StatusBadRequest, "M_UNKNOWN")
		r = c.Do("POST", sharedSecretPath, sharedSecretBody(secret, "never-issued", "other", "pw", false))
		wantError(t, "unknown nonce", r, http.StatusBadRequest, "M_UNKNOWN")

		// A wrong MAC is refused, and spends the nonce.
		n = nonce(t, c)
		r = c.Do("POST", sharedSecretPath, sharedSecretBody("wrong secret", n, "mallory", "pw", true))
		wantError(t, "wrong MAC", r, http.StatusForbidden, "M_FORBIDDEN")
		r = c.Do("POST", sharedSecretPath, sharedSecretBody(secret, n, "mallory", "pw", true))
		wantError(t, "nonce after a wrong MAC", r, http.StatusBadRequest, "M_UNKNOWN")
		// The admin flag is covered by the MAC.
		n = nonce(t, c)
		req = sharedSecretBody(secret, n, "mallory", "pw", false)
		req["admin"] = true
		wantError(t, "flipped admin flag", c.Do("POST", sharedSecretPath, req), http.StatusForbidden, "M_FORBIDDEN")
		r = c.Do("POST", sharedSecretPath, map[string]any{"nonce": nonce(t, c), "username": "mallory", "password": "pw", "mac": "not hex"})
		wantError(t, "MAC not hex", r, http.StatusForbidden, "M_FORBIDDEN")
		if ok, _ := srv.Accounts.UserExists(ctx, "@mallory:"+srv.Config.ServerName); ok {
			t.Fatal("account created with a bad MAC")
		}

		// A non-admin user without a session.
		req = sharedSecretBody(secret, nonce(t, c), "plain", "pw", false)
		req["inhibit_login"] = true
		r = c.MustDo(http.StatusOK, "POST", sharedSecretPath, req)
		if _, ok := r.JSON["access_token"]; ok {
			t.Fatalf("inhibit_login answer: %s", r.Body)
		}
		if u, _ := srv.Accounts.GetUser(ctx, "@plain:"+srv.Config.ServerName); u == nil || u.IsAdmin {
			t.Fatalf("plain account: %+v", u)
		}

		// Username checks apply.
		r = c.Do("POST", sharedSecretPath, sharedSecretBody(secret, nonce(t, c), "root", "pw", false))
		wantError(t, "taken username", r, http.StatusBadRequest, "M_USER_IN_USE")
		r = c.Do("POST", sharedSecretPath, sharedSecretBody(secret, nonce(t, c), "no:colons", "pw", false))
		wantError(t, "invalid username", r, http.StatusBadRequest, "M_INVALID_USERNAME")
	})
}

func TestSharedSecretMalformed(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		secret := srv.Config.RegistrationSharedSecret
		c := srv.Client(t)
		for _, tc := range []struct {
			name    string
			body    func() any
			status  int
			errcode string
		}{
			{"not JSON", func() any { return "nonce=1" }, 400, "M_NOT_JSON"},
			{"admin not a boolean", func() any {
				r := sharedSecretBody(secret, nonce(t, c), "x", "pw", false)
				r["admin"] = "yes"
				return r
			}, 400, "M_BAD_JSON"},
			{"username a number", func() any { return map[string]any{"nonce": nonce(t, c), "username": 7} }, 400, "M_BAD_JSON"},
			{"no nonce", func() any { return map[string]any{"username": "x"} }, 400, "M_MISSING_PARAM"},
			{"no username", func() any { return sharedSecretBody(secret, nonce(t, c), "", "pw", false) }, 400, "M_MISSING_PARAM"},
			{"no password", func() any { return sharedSecretBody(secret, nonce(t, c), "x", "", false) }, 400, "M_MISSING_PARAM"},
			{"no mac", func() any { return map[string]any{"nonce": nonce(t, c), "username": "x", "password": "pw"} }, 400, "M_MISSING_PARAM"},
			{"NUL in username", func() any { return sharedSecretBody(secret, nonce(t, c), "x\x00y", "pw", false) }, 400, "M_INVALID_PARAM"},
			{"user_type", func() any {
				r := sharedSecretBody(secret, nonce(t, c), "x", "pw", false)
				r["user_type"] = "bot"
				return r
			}, 400, "M_INVALID_PARAM"},
		} {
			wantError(t, tc.name, c.Do("POST", sharedSecretPath, tc.body()), tc.status, tc.errcode)
		}

		off := testutil.Start(t, b, func(c *config.Config) { c.RegistrationSharedSecret = "" })
		oc := off.Client(t)
		wantError(t, "nonce while disabled", oc.Do("GET", sharedSecretPath, nil), http.StatusBadRequest, "M_UNKNOWN")
		r := oc.Do("POST", sharedSecretPath, sharedSecretBody("", "n", "x", "pw", false))
		wantError(t, "register while disabled", r, http.StatusBadRequest, "M_UNKNOWN")
	})
}
