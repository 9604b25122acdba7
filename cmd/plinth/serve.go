package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/ratelimit"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/sidecar"
)

func devCmd(g *globals) *cobra.Command {
	var cfg devstack.Config
	var regions string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform on this machine with embedded defaults",
		Long: `Run Plinth on this machine: a control database and shard clusters made
with the installed PostgreSQL server binaries (initdb, pg_ctl), the control
API, a worker, an edge, and the reference product "tracker" (the default
product, examples/tracker) with the smaller sample "notes". State (clusters, ports, the
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
	cmd.Flags().StringVar(&cfg.EdgeListen, "edge-listen", devstack.EdgeListenDefault, "address of the first region's edge")
	cmd.Flags().IntVar(&cfg.WarmPool, "warm-pool", devstack.WarmPoolDefault, "warm databases of the default product per shard")
	cmd.AddCommand(devPsqlCmd(g), devCallCmd(g), devEnvCmd(g))
	return cmd
}

func devEnvCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "env",
		Short: "Print shell exports for the local fleet: the API, its token, the shards' login, and where the sample services listen",
		Example: `  eval "$(plinth dev env)"
  curl -s http://$PLINTH_DEV_EGRESS/echo/hello`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := devstack.ReadState(g.homeDir())
			if err != nil {
				return fmt.Errorf("no plinth dev state in %s: start plinth dev first", g.homeDir())
			}
			token, err := devstack.ReadToken(g.homeDir())
			if err != nil {
				return err
			}
			fmt.Printf("export PLINTH_URL=%s\nexport PLINTH_TOKEN=%s\n", st.APIURL, token)
			// The login on the local shards, for services on the SDK.
			fmt.Printf("export PLINTH_DB_USER=%s\nexport PLINTH_DB_PASSWORD=%s\n", localpg.Superuser, st.Password)
			if s, ok := st.Samples[devstack.DevCaller]; ok {
				fmt.Printf("export PLINTH_DEV_EGRESS=%s\n", s.Egress)
			}
			for _, name := range []string{"tracker", "notes", "echo"} {
				if s, ok := st.Samples[name]; ok {
					fmt.Printf("export PLINTH_%s_INGRESS=%s\n", strings.ToUpper(name), s.Ingress)
				}
			}
			return nil
		},
	}
}

func devCallCmd(g *globals) *cobra.Command {
	var tenant, method, data string
	cmd := &cobra.Command{
		Use:   "call SERVICE PATH",
		Short: "Call a service of the local fleet through its sidecar, as the plinth-dev caller",
		Long: `Send a request to a service the way another service would: through the
plinth-dev sidecar, which mints a token, finds the service and forwards to
its sidecar, which verifies the token before the service sees the request.`,
		Example: `  plinth dev call tracker /api/projects --tenant acme
  plinth dev call notes /notes --tenant acme
  plinth dev call notes /notes --tenant acme -d '{"body": "hello"}'
  plinth dev call notes /echo --tenant acme`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := devstack.ReadState(g.homeDir())
			if err != nil {
				return fmt.Errorf("no plinth dev state in %s: start plinth dev first", g.homeDir())
			}
			caller, ok := st.Samples[devstack.DevCaller]
			if !ok {
				return errors.New("plinth dev is not running its sample services: restart it")
			}
			path := args[1]
			if !strings.HasPrefix(path, "/") {
				path = "/" + path
			}
			if method == "" {
				method = "GET"
				if data != "" {
					method = "POST"
				}
			}
			req, err := http.NewRequestWithContext(cmd.Context(), method, "http://"+caller.Egress+"/"+args[0]+path, strings.NewReader(data))
			if err != nil {
				return err
			}
			if data != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			if tenant != "" {
				c, err := g.client()
				if err != nil {
					return err
				}
				t, err := c.GetTenant(cmd.Context(), tenant)
				if err != nil {
					return err
				}
				req.Header.Set(sidecar.HeaderTenantID, t.ID.String())
				req.Header.Set(sidecar.HeaderTenantSlug, t.Slug)
				req.Header.Set(sidecar.HeaderRegion, t.Region)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("the plinth-dev sidecar at %s does not answer (is plinth dev running?): %w", caller.Egress, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
			if resp.StatusCode >= 400 {
				var p api.Problem
				if json.Unmarshal(body, &p) == nil && p.Code != "" {
					return fmt.Errorf("%d %s: %s", resp.StatusCode, p.Code, p.Detail)
				}
				return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
			}
			_, err = os.Stdout.Write(body)
			return err
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "call on behalf of this tenant (slug or ID)")
	cmd.Flags().StringVarP(&method, "request", "X", "", "HTTP method (default GET, or POST with -d)")
	cmd.Flags().StringVarP(&data, "data", "d", "", "request body (JSON)")
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
	var roles, listen, dbURL, tokenFile, logLevel, backupConfig string
	var pc provision.Config
	var sc sidecarFlags
	var ef edgeFlags
	cmd := &cobra.Command{
		Use:   "serve --role control|worker|all|sidecar|edge",
		Short: "Run Plinth roles (production)",
		Long: `Run one or more roles: control (the control API) and worker (provisioning,
lifecycle and maintenance jobs) against a control database, from
--database-url or PLINTH_DATABASE_URL, migrated on start; the control role
needs the admin token from PLINTH_ADMIN_TOKEN or --admin-token-file.
--backup-config names the shards on this host that Plinth backs up with
pgBackRest, and the repository (a directory or an S3 bucket): see
plinth backup settings for what their servers need.

Or run a service's sidecar (--role sidecar, alone): it needs --service,
--upstream (the service's own URL), the control plane's URL (--control-url
or PLINTH_URL) and the service's registration credential
(PLINTH_SERVICE_CREDENTIAL or --credential-file).

Or run a region's edge router (--role edge, alone): it needs --region, the
control plane's URL and the registration credential of the edge service
(plinth service create edge), and serves tenant traffic on --edge-listen.

Logs are JSON on stderr. SIGTERM drains: requests in flight finish, jobs in
flight get 30 seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			if roles == "sidecar" {
				return runSidecar(cmd.Context(), sc, slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			}
			if roles == "edge" {
				return runEdge(cmd.Context(), ef, sc, slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			}
			if strings.Contains(roles, "sidecar") || strings.Contains(roles, "edge") {
				return errors.New("the sidecar and the edge each run alone: --role sidecar or --role edge")
			}
			for _, d := range []struct {
				flag string
				v    time.Duration
			}{{"--retention", pc.Retention}, {"--replaced-retention", pc.ReplacedRetention}, {"--job-timeout", pc.JobTimeout},
				{"--sweep-interval", pc.SweepInterval}, {"--abandon-after", pc.AbandonAfter}} {
				if d.v < 0 {
					return fmt.Errorf("%s must not be negative, not %s", d.flag, d.v)
				}
			}
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
			token := os.Getenv("PLINTH_ADMIN_TOKEN")
			if tokenFile != "" {
				data, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--admin-token-file: %w", err)
				}
				token = strings.TrimSpace(string(data))
			}
			logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			var backups api.Backups
			if backupConfig != "" {
				br, err := openBackupConfig(backupConfig)
				if err != nil {
					return err
				}
				pc.Restorer, pc.Backups, backups = br, br, br
				go createStanzas(cmd.Context(), br, logger)
			}
			srv, err := server.Start(cmd.Context(), server.Config{
				DatabaseURL: dbURL, Roles: rs, Listen: listen, AdminToken: token, Logger: logger, Provision: pc,
				Backups: backups,
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
	f.StringVar(&roles, "role", "all", "roles to run: control, worker, all (comma-separated), or sidecar, or edge")
	f.StringVar(&listen, "listen", ":7070", "control API address")
	f.StringVar(&dbURL, "database-url", "", "control database URL (default $PLINTH_DATABASE_URL)")
	f.StringVar(&tokenFile, "admin-token-file", "", "file holding the admin token (default $PLINTH_ADMIN_TOKEN)")
	f.StringVar(&backupConfig, "backup-config", "", "JSON file naming the repository and the shards on this host to back up (see docs/operator-guide.md)")
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
	sc.flags(cmd)
	ef.flags(cmd)
	f.DurationVar(&pc.Retention, "retention", provision.RetentionDefault, "how long deleted tenants are kept before purging")
	f.DurationVar(&pc.ReplacedRetention, "replaced-retention", 0, "how long a database a restore replaced is kept for --undo (default: the backups' 30 days)")
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

// sidecarFlags are the flags of `plinth serve --role sidecar`.
type sidecarFlags struct {
	service, upstream, controlURL, credentialFile      string
	ingress, egress, admin, advertise, redis, fallback string
	keyAlg                                             string
	tokenLifetime                                      time.Duration
}

func (f *sidecarFlags) flags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.service, "service", "", "sidecar: the service it fronts")
	fs.StringVar(&f.upstream, "upstream", "", "sidecar: the service's own URL, e.g. http://127.0.0.1:8081")
	fs.StringVar(&f.controlURL, "control-url", "", "sidecar, edge: the control plane's URL (default $PLINTH_URL)")
	fs.StringVar(&f.credentialFile, "credential-file", "", "sidecar, edge: file holding the registration credential (default $PLINTH_SERVICE_CREDENTIAL)")
	fs.StringVar(&f.ingress, "ingress", ":7443", "sidecar: address callers reach the service at")
	fs.StringVar(&f.egress, "egress", "127.0.0.1:7444", "sidecar: address the service calls others through (keep it on loopback)")
	fs.StringVar(&f.admin, "admin", "127.0.0.1:7445", "sidecar: address of /metrics, /healthz and /readyz")
	fs.StringVar(&f.advertise, "advertise", "", "sidecar: URL others reach the ingress at (default from the ingress address)")
	fs.StringVar(&f.redis, "redis", "", "sidecar, edge: Redis address for limits and replay records shared by replicas")
	fs.StringVar(&f.fallback, "ratelimit-fallback", "local", "sidecar: when Redis fails, limit locally, or let requests through (open), or refuse them (closed)")
	fs.StringVar(&f.keyAlg, "key-alg", "ES256", "sidecar: signing algorithm: ES256, RS256 or EdDSA")
	fs.DurationVar(&f.tokenLifetime, "token-lifetime", auth.DefaultLifetime, "sidecar: lifetime of the tokens it mints (at most 1h)")
}

func runSidecar(ctx context.Context, f sidecarFlags, logger *slog.Logger) error {
	cred, err := serviceCredential(f.credentialFile)
	if err != nil {
		return err
	}
	if f.controlURL == "" {
		f.controlURL = os.Getenv("PLINTH_URL")
	}
	fallback, err := ratelimit.ParseFallback(f.fallback)
	if err != nil {
		return err
	}
	cfg := sidecar.Config{
		Service: f.service, Credential: cred, ControlURL: f.controlURL, Upstream: f.upstream,
		Ingress: f.ingress, Egress: f.egress, Admin: f.admin, Advertise: f.advertise,
		KeyAlg: auth.Alg(f.keyAlg), TokenLifetime: f.tokenLifetime, RateLimitFallback: fallback, Logger: logger,
	}
	if f.redis != "" {
		cfg.Redis = redis.NewClient(&redis.Options{Addr: f.redis, DialTimeout: 200 * time.Millisecond,
			ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
		defer cfg.Redis.Close()
	}
	sc, err := sidecar.New(cfg)
	if err != nil {
		return err
	}
	if err := sc.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	logger.Info("sidecar draining")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return sc.Stop(sctx)
}

// openBackupConfig reads a --backup-config file and writes pgBackRest's
// configuration from it.
func openBackupConfig(path string) (*backup.PgBackRest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--backup-config: %w", err)
	}
	fc, err := backup.ParseFileConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--backup-config %s: %w", path, err)
	}
	br, err := fc.Open()
	if err != nil {
		return nil, fmt.Errorf("--backup-config %s: %w", path, err)
	}
	return br, nil
}

// createStanzas creates each stanza in the repository (again is
// harmless), so that archiving and the first scheduled backup can begin.
// A shard not archiving yet is logged; the backup checks report it too.
func createStanzas(ctx context.Context, br *backup.PgBackRest, logger *slog.Logger) {
	for _, name := range br.Stanzas() {
		if err := br.Create(ctx, name); err != nil && ctx.Err() == nil {
			logger.Error("backups: cannot set up the stanza (is its server archiving? plinth backup settings)", "stanza", name, "error", err)
			continue
		}
		logger.Info("backups: stanza ready", "stanza", name)
	}
}
