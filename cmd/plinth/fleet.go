package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

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
	cmd.AddCommand(shardAddCmd(g), shardListCmd(g), shardGetCmd(g), shardDrainCmd(g, true), shardDrainCmd(g, false))
	return cmd
}

func shardAddCmd(g *globals) *cobra.Command {
	var req api.CreateShardRequest
	var dsnFile string
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Register a Postgres server (14+, a role with CREATEDB) as a shard",
		Example: `  plinth shard add --region local-1 --dsn-file ./shard-1.dsn --capacity 2000
  plinth shard add --region local-1 --dsn postgres://plinth:secret@10.0.0.5:5432/postgres`,
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
	_ = cmd.MarkFlagRequired("region")
	return cmd
}

func printShards(w io.Writer, shards []api.Shard) {
	row(w, "NAME", "REGION", "HEALTH", "DRAINING", "DATABASES", "CAPACITY", "DSN")
	for _, s := range shards {
		health := string(s.Health)
		if s.HealthError != "" {
			health += " (" + s.HealthError + ")"
		}
		row(w, s.Name, s.Region, health, s.Draining, s.Databases, s.Capacity, s.DSN)
	}
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
	cmd.AddCommand(register, list, get)
	return cmd
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
