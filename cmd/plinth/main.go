// Command plinth is Plinth's one binary: `plinth dev` runs the whole
// platform on one machine, `plinth serve` runs its roles in production, and
// the other subcommands operate it through the control API.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "plinth: "+errorLine(err))
		os.Exit(1)
	}
}

// errorLine is the one line a failed command prints.
func errorLine(err error) string {
	var p *api.Problem
	if errors.As(err, &p) {
		if p.Detail != "" {
			return fmt.Sprintf("%s (%s)", p.Detail, p.Code)
		}
		return fmt.Sprintf("%s (%s)", p.Title, p.Code)
	}
	return err.Error()
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "plinth",
		Short:         "Plinth runs a multi-tenant SaaS: one Postgres database per tenant per product",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&g.url, "url", "", "control API URL (default $PLINTH_URL, or the one plinth dev started)")
	root.PersistentFlags().StringVar(&g.token, "token", "", "admin token (default $PLINTH_TOKEN, or the one plinth dev created)")
	root.PersistentFlags().StringVar(&g.home, "home", "", "plinth dev's state directory (default $PLINTH_HOME or ./.plinth)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if g.output != "table" && g.output != "json" {
			return fmt.Errorf("--output must be table or json, not %q", g.output)
		}
		return nil
	}
	root.AddCommand(
		devCmd(g), serveCmd(), migrateCmd(),
		tenantCmd(g), shardCmd(g), regionCmd(g), productCmd(g), poolCmd(g), operationCmd(g),
		serviceCmd(g), keysCmd(g), backupCmd(g), restoreCmd(g), drillCmd(g), catalogCmd(g),
		benchCmd(),
	)
	return root
}
