package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
)

func devCmd(g *globals) *cobra.Command {
	var cfg devstack.Config
	var regions string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform on this machine with embedded defaults",
		Long: `Run Plinth on this machine: a control database and shard clusters made
with the installed PostgreSQL server binaries (initdb, pg_ctl), the control
API, a worker, and the sample product "notes". State (clusters, ports, the
admin token) lives in PLINTH_HOME (default ./.plinth) and is reused by the
next start. Set PLINTH_DATABASE_URL to use an existing control database.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Home = g.homeDir()
			cfg.Regions = splitList(regions)
			cfg.DatabaseURL = os.Getenv("PLINTH_DATABASE_URL")
			cfg.Command = invocation()
			cfg.Out = os.Stdout
			return devstack.Run(cmd.Context(), cfg)
		},
	}
	cmd.Flags().IntVar(&cfg.Shards, "shards", devstack.ShardsDefault, "local shard clusters to run")
	cmd.Flags().StringVar(&regions, "regions", devstack.RegionDefault, "comma-separated regions to spread the shards over")
	cmd.Flags().BoolVar(&cfg.Reset, "reset", false, "wipe PLINTH_HOME first")
	cmd.Flags().StringVar(&cfg.Listen, "listen", devstack.ListenDefault, "control API address")
	cmd.Flags().IntVar(&cfg.WarmPool, "warm-pool", devstack.WarmPoolDefault, "warm databases of the sample product per shard")
	cmd.AddCommand(devPsqlCmd(g))
	return cmd
}

func devPsqlCmd(g *globals) *cobra.Command {
	var product string
	cmd := &cobra.Command{
		Use:   "psql TENANT [-- PSQL ARGS…]",
		Short: "Open psql on a tenant's database on the local fleet plinth dev runs",
		Example: `  plinth dev psql acme
  plinth dev psql acme -- -c 'SELECT * FROM plinth.identity'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.GetTenant(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			psql, err := devstack.PsqlCommand(cmd.Context(), g.homeDir(), t, product, args[1:])
			if err != nil {
				return err
			}
			psql.Stdin, psql.Stdout, psql.Stderr = os.Stdin, os.Stdout, os.Stderr
			return psql.Run()
		},
	}
	cmd.Flags().StringVar(&product, "product", "", "which product's database (default: the tenant's only or first one)")
	return cmd
}

// invocation is how the user ran plinth, for the commands dev prints.
func invocation() string {
	exe := os.Args[0]
	if strings.Contains(exe, "go-build") {
		return "go run ./cmd/plinth"
	}
	if filepath.Base(exe) == exe {
		return exe // found on PATH
	}
	return exe
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func serveCmd() *cobra.Command {
	var roles, listen, dbURL, tokenFile, logLevel string
	var pc provision.Config
	cmd := &cobra.Command{
		Use:   "serve --role control|worker|all",
		Short: "Run Plinth roles against a control database (production)",
		Long: `Run one or more roles: control (the control API) and worker (provisioning,
lifecycle and maintenance jobs). The control database comes from
--database-url or PLINTH_DATABASE_URL and is migrated on start. The control
role needs the admin token from PLINTH_ADMIN_TOKEN or --admin-token-file.
Logs are JSON on stderr. SIGTERM drains: requests in flight finish, jobs in
flight get 30 seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := server.ParseRoles(roles)
			if err != nil {
				return err
			}
			if dbURL == "" {
				dbURL = os.Getenv("PLINTH_DATABASE_URL")
			}
			if dbURL == "" {
				return errors.New("no control database: set --database-url or PLINTH_DATABASE_URL")
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			token := os.Getenv("PLINTH_ADMIN_TOKEN")
			if tokenFile != "" {
				data, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--admin-token-file: %w", err)
				}
				token = strings.TrimSpace(string(data))
			}
			logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			srv, err := server.Start(cmd.Context(), server.Config{
				DatabaseURL: dbURL, Roles: rs, Listen: listen, AdminToken: token, Logger: logger, Provision: pc,
			})
			if err != nil {
				return err
			}
			logger.Info("plinth serving", "roles", roles, "addr", srv.Addr())
			<-cmd.Context().Done()
			logger.Info("plinth stopping")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return srv.Stop(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&roles, "role", "all", "roles to run: control, worker, or all (comma-separated)")
	f.StringVar(&listen, "listen", ":7070", "control API address")
	f.StringVar(&dbURL, "database-url", "", "control database URL (default $PLINTH_DATABASE_URL)")
	f.StringVar(&tokenFile, "admin-token-file", "", "file holding the admin token (default $PLINTH_ADMIN_TOKEN)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&pc.Workers, "workers", provision.WorkersDefault, "jobs a worker runs at once")
	f.IntVar(&pc.MaxAttempts, "max-attempts", provision.MaxAttemptsDefault, "attempts before a provisioning or purge fails")
	f.DurationVar(&pc.RetryBase, "retry-base", provision.RetryBaseDefault, "first retry delay (doubles per attempt)")
	f.DurationVar(&pc.RetryMax, "retry-max", provision.RetryMaxDefault, "longest retry delay")
	f.DurationVar(&pc.JobTimeout, "job-timeout", provision.JobTimeoutDefault, "longest a job attempt may run")
	f.DurationVar(&pc.RescueAfter, "rescue-after", provision.RescueAfterDefault, "when a job whose worker died is run again (> --job-timeout)")
	f.DurationVar(&pc.HealthInterval, "health-interval", provision.HealthIntervalDefault, "shard health check interval")
	f.DurationVar(&pc.RefillInterval, "refill-interval", provision.RefillIntervalDefault, "warm pool refill interval")
	f.DurationVar(&pc.SweepInterval, "sweep-interval", provision.SweepIntervalDefault, "clean-up interval")
	f.DurationVar(&pc.AbandonAfter, "abandon-after", provision.AbandonAfterDefault, "when a warm database stuck in creating is dropped")
	f.DurationVar(&pc.Retention, "retention", provision.RetentionDefault, "how long deleted tenants are kept before purging")
	return cmd
}

func migrateCmd() *cobra.Command {
	var dbURL string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Migrate the control database and exit (serve also does this on start)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dbURL == "" {
				dbURL = os.Getenv("PLINTH_DATABASE_URL")
			}
			if dbURL == "" {
				return errors.New("no control database: set --database-url or PLINTH_DATABASE_URL")
			}
			pool, err := pgxpool.New(cmd.Context(), dbURL)
			if err != nil {
				return errors.New("the control database URL is not a valid Postgres connection string")
			}
			defer pool.Close()
			logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if err := catalog.Migrate(cmd.Context(), pool, logger); err != nil {
				return err
			}
			return provision.Migrate(cmd.Context(), pool, logger)
		},
	}
	cmd.Flags().StringVar(&dbURL, "database-url", "", "control database URL (default $PLINTH_DATABASE_URL)")
	return cmd
}
