package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// mautrixRequestTimeout bounds one HTTP request of a mautrix client, long
// enough for a 30-second /sync long-poll.
const mautrixRequestTimeout = 60 * time.Second

// MautrixClient returns an anonymous mautrix-go client of s: the real Matrix
// client library the end-to-end tests drive the server with. It keeps its
// sync token and filter in memory, tracks room state in memory, never
// retries or sleeps on its own (a test must see every error), and logs its
// errors to the test log (requests a test cancels are not errors).
func (s *Server) MautrixClient(t testing.TB) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(s.URL, "", "")
	if err != nil {
		t.Fatalf("mautrix client: %v", err)
	}
	cli.Client.Timeout = mautrixRequestTimeout
	cli.StateStore = mautrix.NewMemoryStateStore()
	cli.DefaultHTTPRetries = 0
	cli.IgnoreRateLimit = true
	cli.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel).With().Timestamp().Logger()
	return cli
}

// RegisterMautrix registers localpart with password through POST /register
// and m.login.dummy (the server must allow open registration, as Start's
// does) and returns a mautrix-go client logged in as the new account.
func (s *Server) RegisterMautrix(t testing.TB, localpart, password string) *mautrix.Client {
	t.Helper()
	cli := s.MautrixClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
		Username:                 localpart,
		Password:                 password,
		InitialDeviceDisplayName: localpart + "'s test device",
	})
	if err != nil {
		t.Fatalf("register %s: %v", localpart, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	if want := id.NewUserID(localpart, s.Config.ServerName); resp.UserID != want {
		t.Fatalf("register %s: user_id %q, want %q", localpart, resp.UserID, want)
	}
	return cli
}
