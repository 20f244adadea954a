package e2e

import (
	"maps"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/synapseadmin"

	"github.com/palpo-go/palpo/internal/testutil"
)

// login logs localpart in with password on a new mautrix client of srv,
// naming the new device deviceName.
func login(t *testing.T, srv *testutil.Server, localpart, password, deviceName string) (*mautrix.Client, error) {
	cli := srv.MautrixClient(t)
	_, err := cli.Login(reqCtx(t), &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:                 password,
		InitialDeviceDisplayName: deviceName,
		StoreCredentials:         true,
	})
	return cli, err
}

// requireWhoami checks that cli's access token identifies its user and
// device.
func requireWhoami(t *testing.T, cli *mautrix.Client) {
	t.Helper()
	who := must(cli.Whoami(reqCtx(t)))(t, "whoami")
	if who.UserID != cli.UserID || who.DeviceID != cli.DeviceID {
		t.Fatalf("whoami = %s/%s, want %s/%s", who.UserID, who.DeviceID, cli.UserID, cli.DeviceID)
	}
}

// deviceNames lists cli's user's devices as device ID → display name.
func deviceNames(t *testing.T, cli *mautrix.Client) map[id.DeviceID]string {
	t.Helper()
	out := map[id.DeviceID]string{}
	for _, d := range must(cli.GetDevicesInfo(reqCtx(t)))(t, "list devices").Devices {
		out[d.DeviceID] = d.DisplayName
	}
	return out
}

// passwordAuth is the auth dict of the m.login.password UIA stage.
func passwordAuth(session, localpart, password string) map[string]any {
	return map[string]any{
		"type":       mautrix.AuthTypePassword,
		"session":    session,
		"identifier": map[string]any{"type": mautrix.IdentifierTypeUser, "user": localpart},
		"password":   password,
	}
}

// TestAccountLifecycle is issue 2's client check: register, log in,
// whoami, devices, password change and logout, as mautrix-go does them.
func TestAccountLifecycle(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		const user, oldPW, newPW = "alice", "old-correct-horse", "new-battery-staple"

		// Registration: the name is free, m.login.dummy registers it (open
		// registration), and then it is taken.
		anon := srv.MautrixClient(t)
		if r := must(anon.RegisterAvailable(reqCtx(t), user))(t, "register/available"); !r.Available {
			t.Fatalf("register/available for a free name: available = false")
		}
		_, uia, err := anon.Register(reqCtx(t), &mautrix.ReqRegister[any]{Username: user, Password: oldPW})
		if uia == nil || !uia.HasSingleStageFlow(mautrix.AuthTypeDummy) {
			t.Fatalf("register without auth: UIA %+v, error %v; want a flow with the single stage m.login.dummy", uia, err)
		}
		reg := must(anon.RegisterDummy(reqCtx(t), &mautrix.ReqRegister[any]{
			Username: user, Password: oldPW, InitialDeviceDisplayName: "phone",
		}))(t, "register")
		if reg.UserID != id.NewUserID(user, srv.Config.ServerName) || reg.AccessToken == "" || reg.DeviceID == "" {
			t.Fatalf("register = %+v, want @%s:%s with an access token and a device", reg, user, srv.Config.ServerName)
		}
		_, err = anon.RegisterAvailable(reqCtx(t), user)
		requireMatrixError(t, "register/available for a taken name", err, http.StatusBadRequest, "M_USER_IN_USE")
		_, err = srv.MautrixClient(t).RegisterDummy(reqCtx(t), &mautrix.ReqRegister[any]{Username: user, Password: "x"})
		requireMatrixError(t, "register a taken name", err, http.StatusBadRequest, "M_USER_IN_USE")

		phone := srv.MautrixClient(t)
		phone.SetCredentials(reg.UserID, reg.AccessToken)
		phone.DeviceID = reg.DeviceID
		requireWhoami(t, phone)

		// Password login opens a second device.
		flows := must(phone.GetLoginFlows(reqCtx(t)))(t, "login flows")
		if !flows.HasFlow(mautrix.AuthTypePassword) {
			t.Fatalf("GET /login offers %+v, want m.login.password", flows.Flows)
		}
		laptop := must(login(t, srv, user, oldPW, "laptop"))(t, "password login")
		if laptop.UserID != phone.UserID || laptop.DeviceID == phone.DeviceID || laptop.AccessToken == phone.AccessToken {
			t.Fatalf("login = %s/%s, want %s on a new device", laptop.UserID, laptop.DeviceID, phone.UserID)
		}
		requireWhoami(t, laptop)

		// Devices: both are listed with their names; renaming one is seen
		// from the other.
		want := map[id.DeviceID]string{phone.DeviceID: "phone", laptop.DeviceID: "laptop"}
		if got := deviceNames(t, laptop); !maps.Equal(got, want) {
			t.Fatalf("devices = %v, want %v", got, want)
		}
		noErr(t, "rename device", laptop.SetDeviceInfo(reqCtx(t), laptop.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "work laptop"}))
		if d := must(phone.GetDeviceInfo(reqCtx(t), laptop.DeviceID))(t, "get device"); d.DisplayName != "work laptop" {
			t.Fatalf("renamed device seen from the other device as %q, want %q", d.DisplayName, "work laptop")
		}

		// Deleting a device asks for the password (UIA), then its token is
		// rejected.
		tablet := must(login(t, srv, user, oldPW, "tablet"))(t, "password login")
		delURL := phone.BuildClientURL("v3", "devices", tablet.DeviceID)
		uia = uiaChallenge(t, phone, http.MethodDelete, delURL, map[string]any{})
		if !uia.HasSingleStageFlow(mautrix.AuthTypePassword) {
			t.Fatalf("device deletion flows = %+v, want the single stage m.login.password", uia.Flows)
		}
		noErr(t, "delete device", phone.DeleteDevice(reqCtx(t), tablet.DeviceID, &mautrix.ReqDeleteDevice[any]{
			Auth: passwordAuth(uia.Session, user, oldPW),
		}))
		_, err = tablet.Whoami(reqCtx(t))
		requireMatrixError(t, "whoami of a deleted device", err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

		// Password change (UIA m.login.password, logout_devices): a wrong
		// password fails the stage, the right one changes the password.
		pwURL := phone.BuildClientURL("v3", "account", "password")
		body := map[string]any{"new_password": newPW, "logout_devices": true}
		uia = uiaChallenge(t, phone, http.MethodPost, pwURL, body)
		if !uia.HasSingleStageFlow(mautrix.AuthTypePassword) {
			t.Fatalf("password change flows = %+v, want the single stage m.login.password", uia.Flows)
		}
		body["auth"] = passwordAuth(uia.Session, user, "wrong password")
		failed := uiaChallenge(t, phone, http.MethodPost, pwURL, body)
		if failed.ErrCode != "M_FORBIDDEN" || failed.Session != uia.Session {
			t.Fatalf("wrong password in UIA: errcode %q session %q, want M_FORBIDDEN in session %q", failed.ErrCode, failed.Session, uia.Session)
		}
		body["auth"] = passwordAuth(uia.Session, user, oldPW)
		must(phone.MakeRequest(reqCtx(t), http.MethodPost, pwURL, body, nil))(t, "change password")

		_, err = login(t, srv, user, oldPW, "old password")
		requireMatrixError(t, "login with the old password", err, http.StatusForbidden, "M_FORBIDDEN")
		_, err = laptop.Whoami(reqCtx(t))
		requireMatrixError(t, "whoami of a device logged out by the password change", err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		requireWhoami(t, phone) // the device that changed the password stays logged in
		desktop := must(login(t, srv, user, newPW, "desktop"))(t, "login with the new password")
		ids := slices.Sorted(maps.Keys(deviceNames(t, desktop)))
		if wantIDs := slices.Sorted(slices.Values([]id.DeviceID{phone.DeviceID, desktop.DeviceID})); !slices.Equal(ids, wantIDs) {
			t.Fatalf("devices after the password change = %v, want %v", ids, wantIDs)
		}

		// Logout ends one session only.
		must(phone.Logout(reqCtx(t)))(t, "logout")
		_, err = phone.Whoami(reqCtx(t))
		requireMatrixError(t, "whoami after logout", err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		requireWhoami(t, desktop)
		if got := deviceNames(t, desktop); len(got) != 1 {
			t.Fatalf("devices after logout = %v, want only %s", got, desktop.DeviceID)
		}
	})
}

// TestSharedSecretRegistration registers accounts through Synapse's
// /_synapse/admin/v1/register with mautrix-go's synapseadmin client, which
// computes the HMAC-SHA1 the way Synapse's register_new_matrix_user does.
func TestSharedSecretRegistration(t *testing.T) {
	testutil.ForEachBackend(t, func(t *testing.T, b testutil.Backend) {
		srv := testutil.Start(t, b)
		secret := srv.Config.RegistrationSharedSecret
		admin := synapseadmin.Client{Client: srv.MautrixClient(t)}

		resp := must(admin.SharedSecretRegister(reqCtx(t), secret, synapseadmin.ReqSharedSecretRegister{
			Username: "operator", Password: "operator-pw", Admin: true, Displayname: "The Operator",
		}))(t, "shared-secret register")
		if resp.UserID != id.NewUserID("operator", srv.Config.ServerName) || resp.AccessToken == "" || resp.DeviceID == "" {
			t.Fatalf("shared-secret register = %+v, want @operator:%s logged in", resp, srv.Config.ServerName)
		}
		op := srv.MautrixClient(t)
		op.SetCredentials(resp.UserID, resp.AccessToken)
		op.DeviceID = resp.DeviceID
		requireWhoami(t, op)
		if dn := must(op.GetOwnDisplayName(reqCtx(t)))(t, "own displayname"); dn.DisplayName != "The Operator" {
			t.Fatalf("displayname = %q, want %q", dn.DisplayName, "The Operator")
		}
		requireWhoami(t, must(login(t, srv, "operator", "operator-pw", "cli"))(t, "login of a shared-secret account"))

		// A non-admin account, with an explicit nonce.
		nonce := must(admin.GetRegisterNonce(reqCtx(t)))(t, "nonce")
		req := synapseadmin.ReqSharedSecretRegister{Username: "helper", Password: "helper-pw", Nonce: nonce}
		must(admin.SharedSecretRegister(reqCtx(t), secret, req))(t, "shared-secret register (not admin)")
		// A nonce serves once.
		_, err := admin.SharedSecretRegister(reqCtx(t), secret, synapseadmin.ReqSharedSecretRegister{Username: "again", Password: "pw", Nonce: nonce})
		requireMatrixError(t, "shared-secret register with a spent nonce", err, http.StatusBadRequest, "M_UNKNOWN")
		// A MAC made with another secret is refused, and registers nobody.
		_, err = admin.SharedSecretRegister(reqCtx(t), "not-the-secret", synapseadmin.ReqSharedSecretRegister{Username: "mallory", Password: "pw"})
		requireMatrixError(t, "shared-secret register with a wrong secret", err, http.StatusForbidden, "M_FORBIDDEN")
		if r := must(admin.Client.RegisterAvailable(reqCtx(t), "mallory"))(t, "register/available"); !r.Available {
			t.Fatalf("a refused shared-secret registration took the name")
		}
	})
}
