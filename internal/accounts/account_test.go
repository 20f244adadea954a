package accounts_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/palpo-go/palpo/internal/testutil"
)

const (
	passwordPath   = "/_matrix/client/v3/account/password"
	deactivatePath = "/_matrix/client/v3/account/deactivate"
)

func TestWhoamiGuest(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		ctx := context.Background()
		u, err := srv.Accounts.CreateUser(ctx, "visitor", "", false, true)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := srv.Accounts.NewSession(ctx, u.UserID, "", "", "127.0.0.1", "test", false)
		if err != nil {
			t.Fatal(err)
		}
		guest := srv.Client(t)
		guest.AccessToken = sess.AccessToken
		w := guest.MustDo(200, "GET", whoamiPath, nil)
		if w.JSON["user_id"] != u.UserID || w.JSON["device_id"] != sess.DeviceID || w.JSON["is_guest"] != true {
			t.Fatalf("guest whoami = %s", w.Body)
		}
		// Guests have no password to change and no account to deactivate.
		expectError(t, guest.Do("POST", passwordPath, map[string]any{"new_password": "x"}), 403, "M_GUEST_ACCESS_FORBIDDEN")
		expectError(t, guest.Do("POST", deactivatePath, map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")
		expectError(t, srv.Client(t).Do("GET", whoamiPath, nil), 401, "M_MISSING_TOKEN")
	})
}

func TestChangePassword(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "old")
		phone, _ := logIn(t, srv, userIDLogin("alice", "old"))

		expectError(t, alice.Do("POST", passwordPath, map[string]any{}), 400, "M_MISSING_PARAM")
		expectError(t, alice.Do("POST", passwordPath, map[string]any{"new_password": ""}), 400, "M_MISSING_PARAM")
		expectError(t, alice.Do("POST", passwordPath, map[string]any{"new_password": 7}), 400, "M_BAD_JSON")
		expectError(t, alice.Do("POST", passwordPath, map[string]any{"new_password": "x", "logout_devices": "yes"}), 400, "M_BAD_JSON")
		expectError(t, alice.Do("POST", passwordPath, "nope"), 400, "M_NOT_JSON")

		r := doWithPassword(t, alice, "POST", passwordPath, map[string]any{"new_password": "new"}, "old")
		if r.Status != 200 {
			t.Fatalf("password change: %d %s", r.Status, r.Body)
		}
		// The requesting device stays, the others are logged out.
		alice.MustDo(200, "GET", whoamiPath, nil)
		expectTokenRevoked(t, phone)
		list := alice.MustDo(200, "GET", devicesPath, nil)
		if n := len(list.JSON["devices"].([]any)); n != 1 {
			t.Fatalf("%d devices after password change, want 1", n)
		}

		expectError(t, srv.Client(t).Do("POST", loginPath, userIDLogin("alice", "old")), 403, "M_FORBIDDEN")
		logIn(t, srv, userIDLogin("alice", "new"))

		// The old password no longer passes UIA either.
		session := uiaChallenge(t, alice, "POST", passwordPath, map[string]any{"new_password": "newer"})
		r = alice.Do("POST", passwordPath, map[string]any{"new_password": "newer", "auth": passwordAuth(session, "alice", "old")})
		expectError(t, r, 401, "M_FORBIDDEN")
	})
}

func TestChangePasswordKeepDevices(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "old")
		phone, _ := logIn(t, srv, userIDLogin("alice", "old"))
		r := doWithPassword(t, alice, "POST", passwordPath, map[string]any{"new_password": "new", "logout_devices": false}, "old")
		if r.Status != 200 {
			t.Fatalf("password change: %d %s", r.Status, r.Body)
		}
		phone.MustDo(200, "GET", whoamiPath, nil)
		alice.MustDo(200, "GET", whoamiPath, nil)
		logIn(t, srv, userIDLogin("alice", "new"))
	})
}

func TestDeactivate(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		ctx := context.Background()
		alice := srv.NewUser(t, "alice", "secret")
		bob := srv.NewUser(t, "bob", "secret")
		phone, _ := logIn(t, srv, userIDLogin("alice", "secret"))
		if _, err := srv.DB.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, updated_ts) VALUES ($1, '', 'm.test', '{}', 1)`, alice.UserID); err != nil {
			t.Fatal(err)
		}
		var hooked []string
		prev := srv.Accounts.Hooks.Deactivated
		srv.Accounts.Hooks.Deactivated = func(ctx context.Context, userID string) {
			if prev != nil {
				prev(ctx, userID)
			}
			hooked = append(hooked, userID)
		}

		expectError(t, alice.Do("POST", deactivatePath, "nope"), 400, "M_NOT_JSON")
		// Without a body the first round is the challenge.
		if r := alice.Do("POST", deactivatePath, nil); r.Status != 401 || r.JSON["flows"] == nil {
			t.Fatalf("deactivate without body: %d %s", r.Status, r.Body)
		}
		r := doWithPassword(t, alice, "POST", deactivatePath, map[string]any{"erase": false}, "secret")
		if r.Status != 200 || r.JSON["id_server_unbind_result"] != "success" {
			t.Fatalf("deactivate: %d %s", r.Status, r.Body)
		}
		if len(hooked) != 1 || hooked[0] != alice.UserID {
			t.Fatalf("Deactivated hook saw %v", hooked)
		}

		expectTokenRevoked(t, alice)
		expectTokenRevoked(t, phone)
		bob.MustDo(200, "GET", whoamiPath, nil)
		expectError(t, srv.Client(t).Do("POST", loginPath, userIDLogin("alice", "secret")), 403, "M_USER_DEACTIVATED")
		tok, err := srv.Accounts.CreateLoginToken(ctx, alice.UserID, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, srv.Client(t).Do("POST", loginPath, map[string]any{"type": "m.login.token", "token": tok}), 403, "M_USER_DEACTIVATED")

		var displayname, avatar sql.NullString
		if err := srv.DB.QueryRow(ctx, `SELECT displayname, avatar_url FROM profiles WHERE user_id = $1`, alice.UserID).Scan(&displayname, &avatar); err != nil {
			t.Fatal(err)
		}
		if displayname.Valid || avatar.Valid {
			t.Fatalf("profile not erased: %v %v", displayname, avatar)
		}
		var n int
		if err := srv.DB.QueryRow(ctx, `SELECT COUNT(*) FROM account_data WHERE user_id = $1`, alice.UserID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("%d account data rows left", n)
		}
		if exists, err := srv.Accounts.UserExists(ctx, alice.UserID); err != nil || !exists {
			t.Fatalf("deactivated user ID must stay taken: %v %v", exists, err)
		}
	})
}

func TestThreepidEndpoints(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		alice := srv.NewUser(t, "alice", "secret")
		anon := srv.Client(t)
		const base = "/_matrix/client/v3/account"

		r := alice.MustDo(200, "GET", base+"/3pid", nil)
		if tp, ok := r.JSON["threepids"].([]any); !ok || len(tp) != 0 {
			t.Fatalf("threepids = %s", r.Body)
		}
		unbind := alice.MustDo(200, "POST", base+"/3pid/unbind", map[string]any{"medium": "email", "address": "a@example.org"})
		if unbind.JSON["id_server_unbind_result"] != "no-support" {
			t.Fatalf("unbind = %s", unbind.Body)
		}

		creds := map[string]any{"client_secret": "s3cret", "sid": "1", "id_server": "id.example.org", "id_access_token": "tok"}
		email := map[string]any{"client_secret": "s3cret", "email": "a@example.org", "send_attempt": 1}
		msisdn := map[string]any{"client_secret": "s3cret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}
		for _, tc := range []struct {
			name    string
			c       *testutil.Client
			path    string
			body    any
			status  int
			errcode string
		}{
			{"post 3pid", alice, "/3pid", map[string]any{"three_pid_creds": creds}, 400, "M_FORBIDDEN"},
			{"post 3pid missing creds", alice, "/3pid", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"add", alice, "/3pid/add", creds, 400, "M_FORBIDDEN"},
			{"add missing sid", alice, "/3pid/add", map[string]any{"client_secret": "s"}, 400, "M_MISSING_PARAM"},
			{"add without token", anon, "/3pid/add", creds, 401, "M_MISSING_TOKEN"},
			{"delete", alice, "/3pid/delete", map[string]any{"medium": "email", "address": "a@example.org"}, 400, "M_FORBIDDEN"},
			{"delete bad medium", alice, "/3pid/delete", map[string]any{"medium": "pigeon", "address": "a"}, 400, "M_INVALID_PARAM"},
			{"bind", alice, "/3pid/bind", creds, 400, "M_SERVER_NOT_TRUSTED"},
			{"bind missing id_server", alice, "/3pid/bind", map[string]any{"client_secret": "s", "sid": "1", "id_access_token": "t"}, 400, "M_MISSING_PARAM"},
			{"unbind missing address", alice, "/3pid/unbind", map[string]any{"medium": "email"}, 400, "M_MISSING_PARAM"},
			{"unbind not JSON", alice, "/3pid/unbind", "nope", 400, "M_NOT_JSON"},
			{"email requestToken", anon, "/3pid/email/requestToken", email, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
			{"msisdn requestToken", anon, "/3pid/msisdn/requestToken", msisdn, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
			{"email requestToken missing email", anon, "/3pid/email/requestToken", map[string]any{"client_secret": "s", "send_attempt": 1}, 400, "M_MISSING_PARAM"},
			{"password email requestToken", anon, "/password/email/requestToken", email, 400, "M_THREEPID_NOT_FOUND"},
			{"password msisdn requestToken", anon, "/password/msisdn/requestToken", msisdn, 400, "M_THREEPID_NOT_FOUND"},
			{"password email requestToken not JSON", anon, "/password/email/requestToken", "nope", 400, "M_NOT_JSON"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				expectError(t, tc.c.Do("POST", base+tc.path, tc.body), tc.status, tc.errcode)
			})
		}
	})
}
