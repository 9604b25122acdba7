package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
)

func catalogCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "catalog", Short: "Check the tenant catalog against the shards"}
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
	return cmd
}
