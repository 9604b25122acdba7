package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
)

func regionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "region", Short: "Manage regions"}
	var edgeURL string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a region",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.CreateRegion(cmd.Context(), api.CreateRegionRequest{Name: args[0], EdgeURL: edgeURL})
			if err != nil {
				return err
			}
			return g.print(r, func(w io.Writer) { fmt.Fprintf(w, "Region %s added.\n", r.Name) })
		},
	}
	add.Flags().StringVar(&edgeURL, "edge-url", "", "URL of the region's edge")
	list := &cobra.Command{
		Use:   "list",
		Short: "List regions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.ListRegions(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(rs, func(w io.Writer) {
				row(w, "NAME", "EDGE", "CREATED")
				for _, r := range rs {
					row(w, r.Name, dash(r.EdgeURL), ago(r.CreatedAt))
				}
			})
		},
	}
	cmd.AddCommand(add, list)
	return cmd
}

func shardCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "shard", Short: "Manage shards: the Postgres servers that hold tenant databases"}
	cmd.AddCommand(shardAddCmd(g), shardListCmd(g), shardGetCmd(g), shardDrainCmd(g, true), shardDrainCmd(g, false),
		shardBackupsCmd(g))
	return cmd
}

func shardAddCmd(g *globals) *cobra.Command {
	var req api.CreateShardRequest
	var dsnFile string
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Register a Postgres server (14+, a role with CREATEDB) as a shard",
		Example: `  plinth shard add --region local-1 --dsn-file ./shard-1.dsn --capacity 2000
  plinth shard add --region local-1 --dsn postgres://plinth:secret@10.0.0.5:5432/postgres
  plinth shard add --region eu-1 --dsn-file ./rds.dsn --backups provider   # a managed database`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (req.DSN == "") == (dsnFile == "") {
				return fmt.Errorf("give the shard's DSN with --dsn-file (keeps the password out of ps) or --dsn")
			}
			if dsnFile != "" {
				data, err := os.ReadFile(dsnFile)
				if err != nil {
					return fmt.Errorf("--dsn-file: %w", err)
				}
				req.DSN = strings.TrimSpace(string(data))
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if req.Name == "" {
				shards, err := c.ListShards(cmd.Context(), "")
				if err != nil {
					return err
				}
				for i := 1; ; i++ {
					req.Name = fmt.Sprintf("%s-s%d", req.Region, i)
					if !slices.ContainsFunc(shards, func(s api.Shard) bool { return s.Name == req.Name }) {
						break
					}
				}
			}
			sh, err := c.CreateShard(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(sh, func(w io.Writer) { printShards(w, []api.Shard{sh}) })
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "shard name (default: <region>-s<n>)")
	cmd.Flags().StringVar(&req.Region, "region", "", "region the shard belongs to (required)")
	cmd.Flags().StringVar(&req.DSN, "dsn", "", "connection string of the server's maintenance database")
	cmd.Flags().StringVar(&dsnFile, "dsn-file", "", "file holding the connection string (keeps its password out of the process list)")
	cmd.Flags().IntVar(&req.Capacity, "capacity", api.ShardCapacityDefault, "how many tenant databases it may hold")
	cmd.Flags().StringVar(&req.Backups, "backups", catalog.BackupsByPlinth,
		"who backs it up: plinth (pgBackRest on its host; restores and drills) or provider (a managed database)")
	_ = cmd.MarkFlagRequired("region")
	return cmd
}

func printShards(w io.Writer, shards []api.Shard) {
	row(w, "NAME", "REGION", "HEALTH", "DRAINING", "DATABASES", "CAPACITY", "BACKUP", "ARCHIVE LAG", "DSN")
	for _, s := range shards {
		health := string(s.Health)
		if s.HealthError != "" {
			health += " (" + s.HealthError + ")"
		}
		last, archived := backupSummary(s.Backup)
		if s.Backups == catalog.BackupsByProvider {
			last, archived = "by its provider", "-"
		}
		row(w, s.Name, s.Region, health, s.Draining, s.Databases, s.Capacity, last, archived, s.DSN)
	}
}

// backupSummary says how a shard's backups stand: the newest backup and
// how far WAL archiving was behind at the last check, or that Plinth does
// not back the shard up.
func backupSummary(b *catalog.BackupStatus) (last, archived string) {
	if b == nil {
		return "not by Plinth", "-"
	}
	last, archived = "none yet", "never"
	if b.LastSuccessAt != nil {
		last = b.LastType + " " + ago(*b.LastSuccessAt)
	}
	if b.LastError != "" {
		last += " (failing: " + catalog.Truncate(b.LastError, 80) + ")"
	}
	if b.LastArchivedAt != nil {
		archived = b.CheckedAt.Sub(*b.LastArchivedAt).Round(time.Second).String()
	}
	return last, archived
}

func shardListCmd(g *globals) *cobra.Command {
	var region string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List shards with their databases, capacity and health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			shards, err := c.ListShards(cmd.Context(), region)
			if err != nil {
				return err
			}
			return g.print(shards, func(w io.Writer) { printShards(w, shards) })
		},
	}
	cmd.Flags().StringVar(&region, "region", "", "only this region's shards")
	return cmd
}

func shardGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a shard",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			sh, err := c.GetShard(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(sh, func(w io.Writer) { printShards(w, []api.Shard{sh}) })
		},
	}
}

func shardDrainCmd(g *globals, drain bool) *cobra.Command {
	use, short := "undrain NAME", "Let a drained shard take new tenant databases again"
	if drain {
		use, short = "drain NAME", "Stop placing new tenant databases on a shard (existing ones stay)"
	}
	var reason string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			sh, err := c.DrainShard(cmd.Context(), args[0], drain, reason)
			if err != nil {
				return err
			}
			return g.print(sh, func(w io.Writer) { printShards(w, []api.Shard{sh}) })
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
	return cmd
}

func shardBackupsCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "backups NAME plinth|provider",
		Short:   "Record who backs a shard up: Plinth (pgBackRest) or its provider (a managed database)",
		Example: `  plinth shard backups eu-west-1-s3 provider --reason "moved to RDS"`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[1] != catalog.BackupsByPlinth && args[1] != catalog.BackupsByProvider {
				return fmt.Errorf("who backs it up is plinth or provider, not %q", args[1])
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			sh, err := c.SetShardBackups(cmd.Context(), args[0], args[1], reason)
			if err != nil {
				return err
			}
			return g.print(sh, func(w io.Writer) { printShards(w, []api.Shard{sh}) })
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
	return cmd
}

func productCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "product", Short: "Register products and their tenant-database migrations"}
	var dir string
	var warmPool int
	var makeDefault bool
	register := &cobra.Command{
		Use:   "register NAME --migrations DIR",
		Short: "Register a product, or add new migrations to it (history is append-only)",
		Long: `Register a product with its tenant-database migrations: files named
<version>_<name>.sql in goose's SQL format (a "-- +goose Up" section, and
optionally "-- +goose Down"). Registering again with more files appends them;
changing a registered file is refused.`,
		Example: `  plinth product register tracker --migrations ./migrations --warm-pool 5`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ms, err := catalog.ReadMigrations(os.DirFS(dir))
			if err != nil {
				return fmt.Errorf("--migrations %s: %w", dir, err)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			req := api.RegisterProductRequest{Name: args[0], Migrations: ms, Default: makeDefault}
			if cmd.Flags().Changed("warm-pool") {
				req.WarmPoolSize = &warmPool
			}
			resp, err := c.RegisterProduct(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(resp, func(w io.Writer) {
				if resp.Changed {
					fmt.Fprintf(w, "Product %s registered at version %d.\n", resp.Product.Name, resp.Product.CurrentVersion)
				} else {
					fmt.Fprintf(w, "Product %s is unchanged (version %d).\n", resp.Product.Name, resp.Product.CurrentVersion)
				}
			})
		},
	}
	register.Flags().StringVar(&dir, "migrations", "", "directory of <version>_<name>.sql files (required)")
	register.Flags().IntVar(&warmPool, "warm-pool", 0, "warm databases to keep ready per shard")
	register.Flags().BoolVar(&makeDefault, "default", false, "make it the product new tenants get by default")
	_ = register.MarkFlagRequired("migrations")

	list := &cobra.Command{
		Use:   "list",
		Short: "List products",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.ListProducts(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ps, func(w io.Writer) {
				row(w, "NAME", "VERSION", "DEFAULT", "WARM POOL")
				for _, p := range ps {
					row(w, p.Name, p.CurrentVersion, p.Default, p.WarmPoolSize)
				}
			})
		},
	}
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a product",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.GetProduct(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(p, func(w io.Writer) {
				row(w, "NAME", "VERSION", "DEFAULT", "WARM POOL")
				row(w, p.Name, p.CurrentVersion, p.Default, p.WarmPoolSize)
			})
		},
	}
	cmd.AddCommand(register, list, get, productMigrateCmd(g))
	return cmd
}

func productMigrateCmd(g *globals) *cobra.Command {
	var to int64
	var concurrency, canary int
	var maxFailures float64
	var detach, pause, resume, status bool
	cmd := &cobra.Command{
		Use:   "migrate PRODUCT",
		Short: "Migrate every tenant database of a product: canary first, then waves by tier",
		Long: `Applies the product's registered migrations to every tenant database across
the fleet, up to --to (the product's current version by default): --canary
tenants first, alone, then the rest in waves from tier 3 (least critical) to
tier 0, --concurrency at a time. Each tenant's result and schema version are
recorded; a tenant that fails is recorded and skipped, and the run stops when
more than --max-failures of the tenants failed (or a canary did). The run is
a durable job: it survives a killed worker and carries on where it was.
New tenants and the warm pool start at the new version already.

It waits with a progress bar (on a terminal) unless --detach; with -o json it
prints the run when it ends. --pause, --resume and --status act on the
product's latest run.`,
		Example: `  plinth product migrate tracker
  plinth product migrate tracker --to 4 --concurrency 8 --canary 5
  plinth product migrate tracker --pause`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var resp api.MigrationRunResponse
			switch {
			case pause || resume || status:
				runs, err := c.ListMigrations(ctx, args[0])
				if err != nil {
					return err
				}
				if len(runs) == 0 {
					return fmt.Errorf("product %s has no migration run", args[0])
				}
				id := runs[0].ID.String()
				switch {
				case pause:
					resp, err = c.MigrationAction(ctx, id, "pause")
				case resume:
					resp, err = c.MigrationAction(ctx, id, "resume")
				default:
					resp, err = c.GetMigration(ctx, id)
				}
				if err != nil {
					return err
				}
				if !resume {
					return printRun(g, resp)
				}
			default:
				req := api.MigrateRequest{To: to, Concurrency: concurrency}
				if cmd.Flags().Changed("canary") {
					req.Canary = &canary
				}
				if cmd.Flags().Changed("max-failures") {
					req.MaxFailureRatio = &maxFailures
				}
				if resp, err = c.StartMigration(ctx, args[0], req); err != nil {
					return err
				}
			}
			if detach {
				return printRun(g, resp)
			}
			if resp, err = followRun(ctx, c, resp, g.output != "json"); err != nil {
				return err
			}
			if err := printRun(g, resp); err != nil {
				return err
			}
			switch resp.Run.State {
			case catalog.RunSucceeded:
				if resp.Run.Total == 0 && g.output != "json" {
					fmt.Printf("\nEvery %s database was at version %d already: nothing to do.\n", resp.Run.Product, resp.Run.TargetVersion)
				}
				return nil
			case catalog.RunPaused:
				return fmt.Errorf("the run was paused; resume it with: plinth product migrate %s --resume", args[0])
			}
			return fmt.Errorf("the run ended %s: %s", resp.Run.State, resp.Run.Error)
		},
	}
	f := cmd.Flags()
	f.Int64Var(&to, "to", 0, "target version (default: the product's current version)")
	f.IntVar(&concurrency, "concurrency", api.MigrateConcurrencyDefault, "tenant databases migrated at once (1-256)")
	f.IntVar(&canary, "canary", api.MigrateCanaryDefault, "tenants migrated first, alone")
	f.Float64Var(&maxFailures, "max-failures", api.MigrateMaxFailureDefault, "stop once more than this share of tenants failed (0-1)")
	f.BoolVar(&detach, "detach", false, "start the run and return")
	f.BoolVar(&pause, "pause", false, "pause the product's latest run")
	f.BoolVar(&resume, "resume", false, "resume the product's latest run")
	f.BoolVar(&status, "status", false, "show the product's latest run")
	cmd.MarkFlagsMutuallyExclusive("pause", "resume", "status")
	return cmd
}

// followRun polls a run until it is over (or paused), drawing a progress
// bar on stderr when it is a terminal and bar is set.
func followRun(ctx context.Context, c *api.Client, resp api.MigrationRunResponse, bar bool) (api.MigrationRunResponse, error) {
	fi, err := os.Stderr.Stat()
	bar = bar && err == nil && fi.Mode()&os.ModeCharDevice != 0
	start := time.Now()
	for {
		r := resp.Run
		if bar {
			finished := r.Tasks["done"] + r.Tasks["failed"] + r.Tasks["skipped"]
			const width = 30
			filled := 0
			if r.Total > 0 {
				filled = finished * width / r.Total
			}
			fmt.Fprintf(os.Stderr, "\r%s v%d [%s%s] %d/%d done, %d failed  %.0fs ", r.Product, r.TargetVersion,
				strings.Repeat("█", filled), strings.Repeat("·", width-filled), r.Tasks["done"], r.Total, r.Tasks["failed"], time.Since(start).Seconds())
		}
		if r.State != catalog.RunRunning {
			if bar {
				fmt.Fprintln(os.Stderr)
			}
			return resp, nil
		}
		select {
		case <-ctx.Done():
			return resp, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if resp, err = c.GetMigration(ctx, r.ID.String()); err != nil {
			return resp, err
		}
	}
}

func printRun(g *globals, resp api.MigrationRunResponse) error {
	return g.print(resp, func(w io.Writer) {
		r := resp.Run
		row(w, "RUN", "PRODUCT", "TO", "STATE", "DONE", "FAILED", "SKIPPED", "PENDING", "TOTAL")
		row(w, r.ID, r.Product, r.TargetVersion, r.State, r.Tasks["done"], r.Tasks["failed"], r.Tasks["skipped"],
			r.Tasks["pending"]+r.Tasks["running"], r.Total)
		if r.Error != "" {
			fmt.Fprintf(w, "\n%s\n", r.Error)
		}
		if len(resp.Failed) > 0 {
			fmt.Fprintln(w)
			row(w, "FAILED TENANT", "DATABASE", "SHARD", "FROM", "ERROR")
			for _, t := range resp.Failed {
				row(w, t.TenantID, t.Database, t.Shard, t.FromVersion, catalog.Truncate(t.Error, 120))
			}
		}
	})
}

func poolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Warm pools: migrated, unassigned databases ready for new tenants"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List warm pools per shard and product",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.ListWarmPools(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ps, func(w io.Writer) {
				row(w, "SHARD", "PRODUCT", "SIZE", "READY", "CREATING")
				for _, p := range ps {
					size := fmt.Sprint(p.Size)
					if !p.Configured {
						size += " (product default)"
					}
					row(w, p.Shard, p.Product, size, p.Ready, p.Creating)
				}
			})
		},
	}
	var shard, product string
	var size int
	set := &cobra.Command{
		Use:   "set --shard S --product P --size N",
		Short: "Set the warm pool size of a product on one shard",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.SetWarmPool(cmd.Context(), shard, product, size)
			if err != nil {
				return err
			}
			return g.print(p, func(w io.Writer) {
				fmt.Fprintf(w, "Warm pool of %s on %s: %d (ready now: %d).\n", p.Product, p.Shard, p.Size, p.Ready)
			})
		},
	}
	set.Flags().StringVar(&shard, "shard", "", "shard (required)")
	set.Flags().StringVar(&product, "product", "", "product (required)")
	set.Flags().IntVar(&size, "size", 0, "warm databases to keep ready, 0 to 1000")
	_ = set.MarkFlagRequired("shard")
	_ = set.MarkFlagRequired("product")
	_ = set.MarkFlagRequired("size")
	cmd.AddCommand(list, set)
	return cmd
}
