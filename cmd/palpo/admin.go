package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/palpo-go/palpo/internal/accounts"
	"github.com/palpo-go/palpo/internal/server"
)

// withServer loads the configuration and opens the server's components
// (without listening) for an administrative command.
func withServer(fs *flag.FlagSet, args []string, fn func(ctx context.Context, srv *server.Server) error) error {
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	cfg.LogLevel = "warn"
	setupLogging(cfg, io.Discard)
	ctx := context.Background()
	srv, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Shutdown(ctx)
	return fn(ctx, srv)
}

// splitName takes the leading positional NAME off args (flags may follow).
func splitName(args []string) (string, []string, error) {
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		return "", nil, usageError{errNoName.Error()}
	}
	return args[0], args[1:], nil
}

func cmdUser(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"user needs a sub-command: create or reset-password"}
	}
	sub, args := args[0], args[1:]
	name, args, err := splitName(args)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("user "+sub, flag.ContinueOnError)
	password := fs.String("password", "", "password (default: a random one, printed)")
	switch sub {
	case "create":
		admin := fs.Bool("admin", false, "make the user a server admin")
		return withServer(fs, args, func(ctx context.Context, srv *server.Server) error {
			local, ok := srv.Accounts.LocalpartOf(name)
			if !ok {
				return fmt.Errorf("%s is not a user of %s", name, srv.Config.ServerName)
			}
			pw, generated := passwordOrRandom(*password)
			u, err := srv.Accounts.CreateUser(ctx, local, pw, *admin, false)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "created %s (admin: %v)\n", u.UserID, u.IsAdmin)
			if generated {
				fmt.Fprintf(stdout, "password: %s\n", pw)
			}
			return nil
		})
	case "reset-password":
		return withServer(fs, args, func(ctx context.Context, srv *server.Server) error {
			local, ok := srv.Accounts.LocalpartOf(name)
			if !ok {
				return fmt.Errorf("%s is not a user of %s", name, srv.Config.ServerName)
			}
			pw, generated := passwordOrRandom(*password)
			if err := srv.Accounts.SetPassword(ctx, srv.Accounts.UserID(local), pw, true, ""); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "password of %s reset; all its devices are logged out\n", srv.Accounts.UserID(local))
			if generated {
				fmt.Fprintf(stdout, "password: %s\n", pw)
			}
			return nil
		})
	}
	return usageError{fmt.Sprintf("unknown user sub-command %q", sub)}
}

func passwordOrRandom(pw string) (string, bool) {
	if pw != "" {
		return pw, false
	}
	return accounts.NewToken("")[:20], true
}

func cmdRegistrationToken(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return usageError{"registration-token needs the sub-command create"}
	}
	fs := flag.NewFlagSet("registration-token create", flag.ContinueOnError)
	uses := fs.Int64("uses", 1, "how many registrations the token allows (0: unlimited)")
	expires := fs.Duration("expires", 0, "lifetime of the token (0: never expires)")
	return withServer(fs, args[1:], func(ctx context.Context, srv *server.Server) error {
		var exp time.Time
		if *expires > 0 {
			exp = time.Now().Add(*expires)
		}
		t, err := srv.Accounts.CreateRegistrationToken(ctx, "", *uses, exp)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, t.Token)
		return nil
	})
}
