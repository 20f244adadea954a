package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/palpo-go/palpo/internal/server"
)

// mediaUsage lists the media sub-commands.
const mediaUsage = `media needs a sub-command:
  palpo media delete mxc://SERVER/ID
  palpo media quarantine mxc://SERVER/ID
  palpo media unquarantine mxc://SERVER/ID
  palpo media purge-remote --days N    cached remote media not downloaded for N days
  palpo media purge-local --days N     local media not downloaded for N days`

// cmdMedia runs the media housekeeping commands.
func cmdMedia(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{mediaUsage}
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("media "+sub, flag.ContinueOnError)
	switch sub {
	case "delete", "quarantine", "unquarantine":
		if len(args) == 0 || !strings.HasPrefix(args[0], "mxc://") {
			return usageError{"media " + sub + " needs an mxc:// URI"}
		}
		serverName, mediaID, ok := strings.Cut(strings.TrimPrefix(args[0], "mxc://"), "/")
		if !ok || serverName == "" || mediaID == "" {
			return usageError{fmt.Sprintf("%q is not an mxc://SERVER/ID URI", args[0])}
		}
		return withServer(fs, args[1:], func(ctx context.Context, srv *server.Server) error {
			var found bool
			var err error
			if sub == "delete" {
				found, err = srv.Media.DeleteMedia(ctx, serverName, mediaID)
			} else {
				found, err = srv.Media.Quarantine(ctx, serverName, mediaID, sub == "quarantine")
			}
			if err != nil {
				return err
			}
			if !found {
				return fmt.Errorf("%s: no such media", args[0])
			}
			fmt.Fprintf(stdout, "%s: %sd\n", args[0], sub)
			return nil
		})
	case "purge-remote", "purge-local":
		days := fs.Int("days", 0, "age in days of the last download")
		return withServer(fs, args, func(ctx context.Context, srv *server.Server) error {
			if *days < 1 {
				return usageError{"media " + sub + " needs --days N (at least 1)"}
			}
			before := time.Now().Add(-time.Duration(*days) * 24 * time.Hour)
			var n int
			if sub == "purge-remote" {
				var err error
				if n, err = srv.Media.PurgeRemote(ctx, before); err != nil {
					return err
				}
			} else {
				ids, err := srv.Media.DeleteLocalBefore(ctx, before)
				if err != nil {
					return err
				}
				n = len(ids)
			}
			fmt.Fprintf(stdout, "%d media items deleted\n", n)
			return nil
		})
	}
	return usageError{fmt.Sprintf("unknown media sub-command %q\n%s", sub, mediaUsage)}
}
