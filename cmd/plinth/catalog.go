package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
)

func catalogCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "catalog", Short: "Check the tenant catalog against the shards, or rebuild it from them"}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify",
		Short: "Compare the catalog with the databases on the shards",
		Long: `Checks that every database the catalog places on a shard exists there, that
every tenant database on a shard is in the catalog, and that each database's
identity row (plinth.identity) names the database, tenant and installation
the catalog says. Reads only; exits non-zero when they disagree.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rep, err := c.VerifyCatalog(cmd.Context())
			if err != nil {
				return err
			}
			if err := g.print(rep, func(w io.Writer) {
				fmt.Fprintf(w, "%d shard(s), %d database(s) checked in %s: %d finding(s)\n", rep.Shards, rep.Databases,
					(time.Duration(rep.TookMS) * time.Millisecond).Round(10*time.Millisecond), len(rep.Findings))
				if len(rep.Findings) > 0 {
					row(w, "SHARD", "DATABASE", "KIND", "DETAIL")
					for _, f := range rep.Findings {
						row(w, f.Shard, orDash(f.Database), f.Kind, f.Detail)
					}
				}
			}); err != nil {
				return err
			}
			if len(rep.Findings) > 0 {
				return fmt.Errorf("the catalog and the shards disagree in %d place(s)", len(rep.Findings))
			}
			return nil
		},
	})
	cmd.AddCommand(catalogRebuildCmd(g))
	return cmd
}

func catalogRebuildCmd(g *globals) *cobra.Command {
	var fromShards, dryRun bool
	cmd := &cobra.Command{
		Use:   "rebuild --from-shards [--dry-run]",
		Short: "Recreate lost tenants, installations and databases from the shards",
		Long: `For when the control database is lost: register the regions, shards and
products again first, then this reads the identity row (plinth.identity) of
every tenant database on the registered shards and recreates what the
catalog lacks: each tenant (same ID, a slug derived from the ID since
databases do not record slugs, tier 3, active), its installations (ready)
and their databases (assigned); an unstamped database comes back as warm.
A tenant is recreated whole, in one transaction with an audit record, or
not at all. Databases the catalog has are left alone; conflicts (two
databases claiming one installation, an unknown product, an installation the
catalog has with another database, a database refusing connections) are
reported and change nothing. Running it again recreates nothing. Exits
non-zero while findings remain.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !fromShards {
				return errors.New("--from-shards is required: the shards' identity rows are what a rebuild reads")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			rep, err := c.RebuildCatalog(cmd.Context(), dryRun)
			if err != nil {
				return err
			}
			verb := "recreated"
			if rep.DryRun {
				verb = "would recreate"
			}
			if err := g.print(rep, func(w io.Writer) {
				if len(rep.Recreated) > 0 {
					row(w, "SHARD", "DATABASE", "STATE", "PRODUCT", "VERSION", "TENANT", "INSTALLATION")
					for _, d := range rep.Recreated {
						tenant, inst := "-", "-"
						if d.TenantID != nil {
							tenant = d.Slug
						}
						if d.InstallationID != nil {
							inst = d.InstallationID.String()
						}
						row(w, d.Shard, d.Database, d.State, d.Product, d.SchemaVersion, tenant, inst)
					}
					fmt.Fprintln(w)
				}
				if len(rep.Findings) > 0 {
					row(w, "SHARD", "DATABASE", "KIND", "DETAIL")
					for _, f := range rep.Findings {
						row(w, f.Shard, orDash(f.Database), f.Kind, f.Detail)
					}
					fmt.Fprintln(w)
				}
				fmt.Fprintf(w, "%d shard(s), %d database(s) in %s: %s %d tenant(s) and %d database(s), %d already in the catalog, %d finding(s)\n",
					rep.Shards, rep.Databases, (time.Duration(rep.TookMS) * time.Millisecond).Round(10*time.Millisecond),
					verb, rep.Tenants, len(rep.Recreated), rep.Unchanged, len(rep.Findings))
			}); err != nil {
				return err
			}
			if len(rep.Findings) > 0 {
				return fmt.Errorf("%d finding(s) remain: the databases named are left out of the catalog", len(rep.Findings))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&fromShards, "from-shards", false, "rebuild from the identity rows of the databases on the registered shards (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be recreated; write nothing")
	return cmd
}
