package main

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
)

func drillCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "drill", Short: "Disaster-recovery drills: prove that the backups restore"}
	var tenants string
	var noWait bool
	run := &cobra.Command{
		Use:   "run [--tenants N|all]",
		Short: "Restore a sample of tenants and the shards' heartbeats into scratch and check them",
		Long: `Restores --tenants tenants (those drilled least recently first) and the
heartbeat database of each shard they live on, as they are now, into scratch
servers from the backups; checks that each tenant database carries its own
identity and that the restored heartbeat is within the RPO (10 s) of the
target; and records the result per tenant. Nothing live is touched. Plinth
also runs a drill by itself when none ran in a week.`,
		Example: `  plinth drill run
  plinth drill run --tenants all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req api.DrillRequest
			if tenants == "all" {
				req.All = true
			} else {
				n, err := strconv.Atoi(tenants)
				if err != nil || n < 1 || n > catalog.MaxDrillSample {
					return fmt.Errorf("--tenants must be a number from 1 to %d, or all", catalog.MaxDrillSample)
				}
				req.Sample = n
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			began := time.Now()
			d, err := c.StartDrill(cmd.Context(), req)
			if err != nil {
				return err
			}
			if noWait {
				return g.print(d, func(w io.Writer) {
					fmt.Fprintf(w, "Drill accepted: %s (follow it with: plinth drill get %s)\n", d.ID, d.ID)
				})
			}
			for d.State == catalog.DrillRunning {
				select {
				case <-cmd.Context().Done():
					return fmt.Errorf("stopped waiting; drill %s goes on (plinth drill get %s)", d.ID, d.ID)
				case <-time.After(500 * time.Millisecond):
				}
				if d, err = c.GetDrill(cmd.Context(), d.ID); err != nil {
					return err
				}
			}
			took := time.Since(began)
			if err := g.print(d, func(w io.Writer) { printDrill(w, d, took) }); err != nil {
				return err
			}
			if d.State != catalog.DrillSucceeded {
				return fmt.Errorf("drill %s failed", d.ID)
			}
			return nil
		},
	}
	run.Flags().StringVar(&tenants, "tenants", "10", "how many tenants to drill, or all")
	run.Flags().BoolVar(&noWait, "no-wait", false, "return once the drill is accepted")
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a drill and each checked database",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return fmt.Errorf("%q is not a drill ID", args[0])
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.GetDrill(cmd.Context(), id)
			if err != nil {
				return err
			}
			var took time.Duration
			if d.FinishedAt != nil {
				took = d.FinishedAt.Sub(d.CreatedAt)
			}
			return g.print(d, func(w io.Writer) { printDrill(w, d, took) })
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "The newest drills",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ds, err := c.ListDrills(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ds, func(w io.Writer) {
				row(w, "ID", "STATE", "TARGET", "SAMPLE", "ACTOR", "ERROR")
				for _, d := range ds.Items {
					sample := "all"
					if d.Sample != nil {
						sample = strconv.Itoa(*d.Sample)
					}
					row(w, d.ID.String(), d.State, d.TargetTime.UTC().Format(time.RFC3339), sample, d.Actor, orDash(d.Error))
				}
			})
		},
	}
	report := &cobra.Command{
		Use:   "report",
		Short: "How the drills cover the tenants, per tier, and who has not been drilled in two weeks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rep, err := c.GetDrillReport(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(rep, func(w io.Writer) {
				row(w, "TIER", "TENANTS", "OVERDUE", "OLDEST LAST SUCCESS")
				for _, t := range rep.Tiers {
					row(w, strconv.Itoa(t.Tier), strconv.Itoa(t.Tenants), strconv.Itoa(t.Overdue), when(t.OldestSuccess, "never (a tenant was not drilled yet)"))
				}
				if len(rep.Overdue) > 0 {
					fmt.Fprintf(w, "\nNo successful drill in %d days:\n", rep.WindowDays)
					row(w, "TENANT", "TIER", "LAST SUCCESS")
					for _, o := range rep.Overdue {
						row(w, o.Tenant, strconv.Itoa(o.Tier), when(o.LastSuccess, "never"))
					}
				}
			})
		},
	}
	cmd.AddCommand(run, get, list, report)
	return cmd
}

func when(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
}

func printDrill(w io.Writer, d catalog.Drill, took time.Duration) {
	fmt.Fprintf(w, "Drill to %s: %s in %s (drill %s)\n", d.TargetTime.UTC().Format(time.RFC3339), d.State,
		took.Round(100*time.Millisecond), d.ID)
	if d.Error != "" {
		fmt.Fprintf(w, "  %s\n", d.Error)
	}
	row(w, "SHARD", "DATABASE", "TENANT", "CHECK", "SCRATCH RESTORE", "REPLAY", "HEARTBEAT LAG")
	for _, r := range d.Results {
		check := "ok"
		if !r.OK {
			check = "FAILED"
		}
		row(w, r.Shard, r.Database, orDash(r.Tenant), check, ms(&r.RestoreMS), ms(&r.ReplayMS), ms(r.HeartbeatLagMS))
		if r.Detail != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Database, r.Detail)
		}
	}
}
