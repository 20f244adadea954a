package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestMediaCommands(t *testing.T) {
	t.Setenv("PALPO_DATA_DIR", t.TempDir())
	t.Setenv("PALPO_SERVER_NAME", "example.test")
	var out bytes.Buffer
	ok := func(args ...string) string {
		t.Helper()
		out.Reset()
		if err := run(args, &out, &out); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	// Remote media can be quarantined before it is fetched: the command
	// records it, and then it exists for the others.
	if got := ok("media", "quarantine", "mxc://remote.test/abcDEF"); !strings.Contains(got, "mxc://remote.test/abcDEF: quarantined") {
		t.Fatalf("quarantine: %q", got)
	}
	if got := ok("media", "unquarantine", "mxc://remote.test/abcDEF"); !strings.Contains(got, "unquarantined") {
		t.Fatalf("unquarantine: %q", got)
	}
	if got := ok("media", "purge-remote", "--days", "1"); !strings.Contains(got, "0 media items deleted") {
		t.Fatalf("purge-remote: %q", got)
	}
	if got := ok("media", "delete", "mxc://remote.test/abcDEF"); !strings.Contains(got, "deleted") {
		t.Fatalf("delete: %q", got)
	}
	if got := ok("media", "purge-local", "--days", "30"); !strings.Contains(got, "0 media items deleted") {
		t.Fatalf("purge-local: %q", got)
	}
	if err := run([]string{"media", "delete", "mxc://remote.test/abcDEF"}, &out, &out); err == nil || !strings.Contains(err.Error(), "no such media") {
		t.Fatalf("delete of missing media: %v", err)
	}
	if err := run([]string{"media", "quarantine", "mxc://example.test/nosuch"}, &out, &out); err == nil {
		t.Fatal("quarantine of unknown local media succeeded")
	}
	for _, args := range [][]string{
		{"media"}, {"media", "shred"}, {"media", "delete"}, {"media", "delete", "https://x/y"},
		{"media", "quarantine", "mxc://onlyserver"}, {"media", "purge-local"},
	} {
		var ue usageError
		if err := run(args, &out, &out); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}
