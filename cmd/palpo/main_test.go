package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestVersionAndGenerateConfig(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"version"}, &out, &out); err != nil || !strings.HasPrefix(out.String(), "palpo ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
	out.Reset()
	if err := run([]string{"generate-config"}, &out, &out); err != nil || !strings.Contains(out.String(), "# env: PALPO_SERVER_NAME") {
		t.Fatalf("generate-config: %v", err)
	}
	if err := run([]string{"frobnicate"}, &out, &out); err == nil {
		t.Fatal("unknown command accepted")
	}
}

func TestUserCommands(t *testing.T) {
	t.Setenv("PALPO_DATA_DIR", t.TempDir())
	t.Setenv("PALPO_SERVER_NAME", "example.test")
	var out bytes.Buffer
	if err := run([]string{"user", "create", "alice", "--admin", "--password", "pw"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "created @alice:example.test (admin: true)") {
		t.Fatalf("user create: %q", out.String())
	}
	if err := run([]string{"user", "create", "alice"}, &out, &out); err == nil {
		t.Fatal("duplicate user accepted")
	}
	out.Reset()
	if err := run([]string{"user", "reset-password", "@alice:example.test"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "password: ") {
		t.Fatalf("reset-password did not print the new password: %q", out.String())
	}
	out.Reset()
	if err := run([]string{"registration-token", "create", "--uses", "3"}, &out, &out); err != nil || len(strings.TrimSpace(out.String())) < 8 {
		t.Fatalf("registration-token: %v %q", err, out.String())
	}
	if err := run([]string{"user", "create", "@bob:elsewhere"}, &out, &out); err == nil {
		t.Fatal("user of another server accepted")
	}
}

func TestInvalidConfigurationStops(t *testing.T) {
	t.Setenv("PALPO_REGISTRATION", "sometimes")
	var out bytes.Buffer
	err := run([]string{"serve"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "registration") {
		t.Fatalf("invalid option: %v", err)
	}
}
