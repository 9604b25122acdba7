package main

import (
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/bench"
)

func benchCmd() *cobra.Command {
	var profile string
	var stopProfile func()
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks that measure Plinth against its competitor in the same run",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if profile == "" {
				return nil
			}
			f, err := os.Create(profile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return err
			}
			stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if stopProfile != nil {
				stopProfile()
			}
		}}
	cmd.PersistentFlags().StringVar(&profile, "cpuprofile", "", "write a CPU profile of the benchmark process to this file")
	var cfg bench.ProvisionConfig
	var asJSON bool
	provision := &cobra.Command{
		Use:   "provision",
		Short: "Raw CREATE DATABASE vs Plinth cold and warm-pool provisioning, then a scale run",
		Long: `Starts a stack of its own (a control cluster and one shard cluster from the
local PostgreSQL binaries, and plinth serve as a subprocess) and measures, in
one run: (a) raw CREATE DATABASE … TEMPLATE of the product template over one
open connection, (b) Plinth cold provisioning from the API call to the
tenant being active, (c) the same from a warm pool; then provisions --scale
tenants on the one shard and reports errors, connections held, the control
plane's memory and disk per tenant.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Exe = exe
			if !asJSON {
				cfg.Progress = os.Stderr
			}
			rep, err := bench.Provision(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return bench.PrintProvision(os.Stdout, rep, asJSON)
		},
	}
	provision.Flags().IntVar(&cfg.Tenants, "tenants", 100, "tenants per measured series")
	provision.Flags().IntVar(&cfg.Scale, "scale", 1000, "tenants for the scale run on one shard (0 skips it)")
	provision.Flags().IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent provisionings in the scale run")
	provision.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	var pc bench.ProxyConfig
	sidecarCmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Direct vs Plinth sidecar vs httputil.ReverseProxy vs nginx, at a fixed rate and saturated",
		Long: `Starts a control plane, an echo service, the Plinth sidecar in front of it
(as its own process), a plain httputil.ReverseProxy (its own process) and,
when installed, nginx with one worker and upstream keep-alive; then drives
each with the same load generator: 1 KB bodies, 16 connections, a fixed
rate and a saturating run. Also reports the sidecar's CPU per 1,000 req/s,
its resident memory, and what token verification costs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			pc.Exe = exe
			if !asJSON {
				pc.Progress = os.Stderr
			}
			rep, err := bench.Sidecar(cmd.Context(), pc)
			if err != nil {
				return err
			}
			return bench.PrintSidecar(os.Stdout, rep, asJSON)
		},
	}
	sidecarCmd.Flags().DurationVar(&pc.Duration, "duration", 10*time.Second, "length of each run")
	sidecarCmd.Flags().Float64Var(&pc.Rate, "rate", 1000, "requests per second of the fixed-rate run")
	sidecarCmd.Flags().IntVar(&pc.Connections, "connections", 16, "concurrent connections")
	sidecarCmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")

	var upstream, listen string
	rp := &cobra.Command{
		Use:    "reverse-proxy",
		Short:  "A plain httputil.ReverseProxy, the baseline the proxy benchmarks compare against",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := url.Parse("http://" + upstream)
			if err != nil {
				return err
			}
			p := httputil.NewSingleHostReverseProxy(u)
			p.Transport = &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
			srv := &http.Server{Addr: listen, Handler: p, ReadHeaderTimeout: 10 * time.Second}
			go func() { <-cmd.Context().Done(); _ = srv.Close() }()
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	rp.Flags().StringVar(&upstream, "upstream", "", "host:port to proxy to")
	rp.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to listen on")
	cmd.AddCommand(provision, sidecarCmd, benchEdgeCmd(), benchTenantctxCmd(), benchTenantDBCmd(), benchMigrateCmd(), benchRestoreCmd(), rp)
	return cmd
}

func benchEdgeCmd() *cobra.Command {
	var pc bench.ProxyConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "edge",
		Short: "Direct vs the Plinth edge vs httputil.ReverseProxy vs nginx, at a fixed rate and saturated",
		Long: `Starts a control plane with a worker and a shard, an active tenant "bench",
an echo service registered as the only instance of a routed service, the
Plinth edge (its own process: tenant lookup, state check, limits and token
minting on every request), a plain httputil.ReverseProxy and, when
installed, nginx with one worker and upstream keep-alive; then drives each
with the same load generator (Host: bench.plinth.localhost, 1 KB bodies,
16 connections) at a fixed rate and saturated.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			pc.Exe = exe
			if !asJSON {
				pc.Progress = os.Stderr
			}
			rep, err := bench.EdgeRouter(cmd.Context(), pc)
			if err != nil {
				return err
			}
			return bench.PrintEdge(os.Stdout, rep, asJSON)
		},
	}
	cmd.Flags().DurationVar(&pc.Duration, "duration", 10*time.Second, "length of each run")
	cmd.Flags().Float64Var(&pc.Rate, "rate", 1000, "requests per second of the fixed-rate run")
	cmd.Flags().IntVar(&pc.Connections, "connections", 16, "concurrent connections")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchTenantctxCmd() *cobra.Command {
	var cfg bench.TenantctxConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "tenantctx",
		Short: "The tenant-context cache vs a plain map: hit latency, lookups per core, hit ratio, memory, single flight, invalidation",
		Long: `Measures the in-process tenant-context cache on synthetic tenants, against
a plain map under a sync.RWMutex holding the same contexts: hit latency
(each lookup timed on its own, on every core at once), lookups per second
per core, bytes per entry, and the hit ratio of a cache a tenth the size of
the tenant set under Zipf-distributed lookups (next to the ideal: the share
of lookups of the most popular tenants that fit). Then starts a control
plane of its own and measures, against it, how many loads many concurrent
lookups of one uncached tenant cause, and how long a catalog change takes
to reach several caches following the change feed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Exe = exe
			if !asJSON {
				cfg.Progress = os.Stderr
			}
			rep, err := bench.Tenantctx(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return bench.PrintTenantctx(os.Stdout, rep, asJSON)
		},
	}
	cmd.Flags().IntVar(&cfg.Tenants, "tenants", 100_000, "synthetic tenants (the hit-ratio cache holds a tenth)")
	cmd.Flags().Float64SliceVar(&cfg.Exponents, "zipf", []float64{1.1, 1.3, 1.5, 1.7, 2.0}, "Zipf exponents of the hit-ratio runs (each above 1)")
	cmd.Flags().IntVar(&cfg.Lookups, "lookups", 2_000_000, "measured lookups per hit-ratio run")
	cmd.Flags().DurationVar(&cfg.Duration, "duration", 3*time.Second, "length of each throughput run")
	cmd.Flags().IntVar(&cfg.Caches, "caches", 8, "caches following the change feed in the invalidation run")
	cmd.Flags().IntVar(&cfg.Changes, "changes", 100, "catalog changes in the invalidation run")
	cmd.Flags().IntVar(&cfg.Concurrent, "concurrent", 10_000, "concurrent lookups of one uncached tenant")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchTenantDBCmd() *cobra.Command {
	var cfg bench.TenantDBConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "tenantdb",
		Short: "Plinth's connection manager vs a pool per tenant vs one shared database",
		Long: `Starts shard clusters of its own, creates the tenant databases (100 rows each)
and one shared database per shard holding the same rows with a tenant_id
column, then drives each contender with the same workers picking tenants
from a Zipf distribution: (a) Plinth's connection manager with a cap per
shard, (b) a pgxpool per tenant, (c) the shared database through a pool of
the same cap. Prints throughput, latency, errors, the pool hit ratio,
connects per second and the peak server connections of each; then what
idle tenants hold once the manager's idle timeout passed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !asJSON {
				cfg.Progress = os.Stderr
			}
			rep, err := bench.TenantDB(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return bench.PrintTenantDB(os.Stdout, rep, asJSON)
		},
	}
	cmd.Flags().IntVar(&cfg.Tenants, "tenants", 1000, "tenant databases")
	cmd.Flags().IntVar(&cfg.Shards, "shards", 2, "shard clusters")
	cmd.Flags().IntVar(&cfg.Workers, "workers", 200, "concurrent workers")
	cmd.Flags().IntVar(&cfg.Cap, "cap", 40, "connections per shard for (a) and (c)")
	cmd.Flags().IntVar(&cfg.MaxConnections, "max-connections", 100, "each shard's max_connections")
	cmd.Flags().IntVar(&cfg.Share, "share", 0, "the manager's per-tenant share of a shard's cap (0: a quarter of the cap)")
	cmd.Flags().DurationVar(&cfg.Affinity, "affinity", 0, "how long others may wait while a tenant hands connections to its own waiters (0: the manager's default, 1s)")
	cmd.Flags().Float64Var(&cfg.Zipf, "zipf", 1.1, "Zipf exponent of the tenants' popularity")
	cmd.Flags().DurationVar(&cfg.Duration, "duration", 10*time.Second, "length of each run")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchMigrateCmd() *cobra.Command {
	var cfg bench.MigrateConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "A sequential psql -f loop vs plinth product migrate over the same tenant databases",
		Long: `Starts a stack of its own, provisions --tenants tenants on one shard, then
applies the same kind of change (a column and an index) to every tenant
database: (a) with psql -f, one database after another, (b) with Plinth's
fleet migration at --concurrency. Prints both times and the ratio.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Exe = exe
			if !asJSON {
				cfg.Progress = os.Stderr
			}
			rep, err := bench.Migrate(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return bench.PrintMigrate(os.Stdout, rep, asJSON)
		},
	}
	cmd.Flags().IntVar(&cfg.Tenants, "tenants", 1000, "tenant databases")
	cmd.Flags().IntVar(&cfg.Concurrency, "concurrency", 0, "Plinth's concurrency (default: plinth product migrate's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func benchRestoreCmd() *cobra.Command {
	var cfg bench.RestoreConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "The naive whole-shard restore vs Plinth's per-tenant restore of a big tenant, the RPO, and a mass restore",
		Long: `Starts plinth dev of its own (two shards archiving WAL into an encrypted
pgBackRest repository, in a temporary home unless --home), puts one big
tenant filled to --big-mb MiB and --small small tenants on one shard, takes a
full backup, writes rows before and after a target time, and measures: the
RPO (a commit until its WAL segment is in the repository); (a) the naive
path: the whole shard restored into a scratch server, WAL replayed to the
target, the tenant's database dumped and loaded into the live shard; (b)
Plinth's restore of the tenant, from POST /v1/restores to the tenant active
on its restored database. Prints each step's time, both totals and the
ratio, and checks that each restore holds the rows before the target and
none after. --mass restores that many more small tenants, created over both
shards, in one request.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Exe = exe
			if !asJSON {
				cfg.Progress = os.Stderr
			}
			rep, err := bench.Restore(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return bench.PrintRestore(os.Stdout, rep, asJSON)
		},
	}
	cmd.Flags().IntVar(&cfg.BigMB, "big-mb", bench.RestoreBigMBDefault, "size of the big tenant's database in MiB")
	cmd.Flags().IntVar(&cfg.Small, "small", bench.RestoreSmallDefault, "small tenants on the big tenant's shard")
	cmd.Flags().IntVar(&cfg.Mass, "mass", 0, "small tenants over both shards restored in one request (0 skips it)")
	cmd.Flags().IntVar(&cfg.Concurrency, "concurrency", 0, "Plinth's restore copy concurrency (0: its default)")
	cmd.Flags().StringVar(&cfg.Home, "bench-home", "", "an empty directory for the benchmark's plinth dev (default: a temporary one, removed afterwards)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
