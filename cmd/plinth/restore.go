package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
)

func tenantRestoreCmd(g *globals) *cobra.Command {
	var to, product, file, deleted, as string
	var undo, noWait bool
	var concurrency int
	cmd := &cobra.Command{
		Use:   "restore [TENANT]",
		Short: "Restore a tenant's databases to a point in time from the backups (or undo the last restore)",
		Long: `Restores only this tenant's databases, as they were at --to, from the shards'
backups: pgBackRest restores them into a scratch server (archiving off),
Postgres replays WAL to the target and promotes, and each database is copied
into a new database on its live shard and its identity checked. Then one
catalog transaction swaps them in: the tenant is "restoring" for the moment
of the swap (the edge holds its requests), then back to its state. The tenant
keeps its ID and ARIs; other tenants on the shard are untouched.

The databases it replaces are kept (state replaced) and refuse connections;
--undo swaps them back. --as restores into a new tenant instead (same region
and tier), to look at the old data without touching the tenant. --file restores many tenants at once (one slug or ID
per line): one scratch restore per shard, parallel copies, and a tenant that
fails is reported, not a stop. A deleted tenant, and a purged one (by ID)
while its backups last, comes back from the backups to the state it had
before it was deleted; --deleted-between A,B restores every tenant deleted in
that window, as after a script deleted them by mistake. The restore is a durable job: if Plinth dies,
it resumes when Plinth starts again.`,
		Example: `  plinth tenant restore acme --to -15m
  plinth tenant restore acme --to 2026-12-07T10:00:00Z --product tracker
  plinth tenant restore acme --to -1h --as acme-before-import
  plinth tenant restore acme --undo
  plinth tenant restore --file deleted-by-mistake.txt --to -2h --concurrency 4
  plinth tenant restore --deleted-between -3h,-1h --to -3h`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.RestoreRequest{Product: product, Undo: undo, Concurrency: concurrency, As: as}
			now := time.Now()
			if as != "" && (len(args) != 1 || undo || file != "" || deleted != "") {
				return errors.New("--as restores one named tenant to --to into a new tenant; it takes no --file, --deleted-between or --undo")
			}
			switch {
			case (len(args) == 1 && file != "") || (deleted != "" && (len(args) == 1 || file != "")):
				return errors.New("name one tenant, or give --file or --deleted-between, not more than one")
			case deleted != "":
				w, err := api.ParseDeletedBetween(deleted, now)
				if err != nil {
					return err
				}
				req.DeletedBetween = []string{w[0].UTC().Format(time.RFC3339Nano), w[1].UTC().Format(time.RFC3339Nano)}
			case len(args) == 1:
				req.Tenants = args
			case file != "":
				ids, err := readTenantFile(file)
				if err != nil {
					return err
				}
				req.Tenants = ids
			default:
				return errors.New("name the tenant to restore (or --file with one per line, or --deleted-between)")
			}
			switch {
			case undo && to != "":
				return errors.New("--undo takes no --to")
			case !undo && to == "":
				return errors.New("--to is required: an RFC 3339 time or a duration before now such as -15m")
			case !undo:
				t, err := api.ParseRestoreTarget(to, now)
				if err != nil {
					return err
				}
				req.To = t.UTC().Format(time.RFC3339Nano) // fixed now, not when the server reads it
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			began := time.Now()
			r, err := c.StartRestore(cmd.Context(), req)
			if err != nil {
				return err
			}
			if !noWait {
				progress := os.Stderr
				last := ""
				for r.State == catalog.RestoreRunning {
					if s := restoreProgress(r); s != last && g.output != "json" {
						fmt.Fprintf(progress, "%6.1fs  %s\n", time.Since(began).Seconds(), s)
						last = s
					}
					select {
					case <-cmd.Context().Done():
						return fmt.Errorf("stopped waiting; restore %s goes on (plinth restore get %s)", r.ID, r.ID)
					case <-time.After(300 * time.Millisecond):
					}
					if r, err = c.GetRestore(cmd.Context(), r.ID); err != nil {
						return err
					}
				}
			}
			took := time.Since(began)
			if err := g.print(r, func(w io.Writer) { printRestore(w, r, took, noWait) }); err != nil {
				return err
			}
			if !noWait && r.State != catalog.RestoreSucceeded {
				return fmt.Errorf("restore %s %s", r.ID, strings.ReplaceAll(r.State, "_", " "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the moment to restore to: RFC 3339 time, or a duration before now (-15m)")
	cmd.Flags().StringVar(&product, "product", "", "restore only this product's database")
	cmd.Flags().StringVar(&as, "as", "", "restore into a new tenant of this slug for inspection, leaving the tenant as it is")
	cmd.Flags().BoolVar(&undo, "undo", false, "swap back the databases the last restore replaced")
	cmd.Flags().StringVar(&file, "file", "", "restore the tenants listed in this file (one slug or ID per line)")
	cmd.Flags().StringVar(&deleted, "deleted-between", "", "restore the tenants deleted (or purged) between two times A,B (RFC 3339 or -3h,-1h)")
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "databases copied at once per shard, and tenants swapped at once (1-32, default 2)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the restore is accepted")
	return cmd
}

// readTenantFile reads one tenant per line; blank lines and # comments are
// skipped.
func readTenantFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) > 63 || strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%s:%d: %q is not a tenant slug or ID", path, n, line)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s names no tenant", path)
	}
	return out, nil
}

func restoreProgress(r catalog.Restore) string {
	counts := map[string]int{}
	for _, it := range r.Items {
		counts[it.State]++
	}
	var parts []string
	for _, s := range []string{catalog.ItemPending, catalog.ItemCopied, catalog.ItemSwapped, catalog.ItemFailed} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	return fmt.Sprintf("%d database(s): %s", len(r.Items), strings.Join(parts, ", "))
}

func ms(p *int64) string {
	if p == nil {
		return "-"
	}
	return (time.Duration(*p) * time.Millisecond).Round(10 * time.Millisecond).String()
}

func printRestore(w io.Writer, r catalog.Restore, took time.Duration, noWait bool) {
	what := "Restore"
	if r.Kind == catalog.RestoreKindUndo {
		what = "Undo"
	} else if r.TargetTime != nil {
		what = "Restore to " + r.TargetTime.UTC().Format(time.RFC3339)
	}
	if r.AsTenant != "" {
		what += " into new tenant " + r.AsTenant
	}
	if noWait {
		fmt.Fprintf(w, "%s accepted: restore %s (follow it with: plinth restore get %s)\n", what, r.ID, r.ID)
		return
	}
	fmt.Fprintf(w, "%s: %s in %s (restore %s)\n", what, strings.ReplaceAll(r.State, "_", " "), took.Round(100*time.Millisecond), r.ID)
	row(w, "TENANT", "PRODUCT", "SHARD", "STATE", "SCRATCH RESTORE", "REPLAY", "COPY", "SWAP", "DATABASE")
	for _, it := range r.Items {
		db := it.RestoredDatabase
		if it.State != catalog.ItemSwapped {
			db = it.CurrentDatabase
		}
		row(w, it.Tenant, it.Product, it.Shard, it.State, ms(it.RestoreMS), ms(it.ReplayMS), ms(it.CopyMS), ms(it.SwapMS), db)
		if it.Error != "" {
			fmt.Fprintf(w, "  %s: %s\n", it.Tenant, it.Error)
		}
	}
}

func restoreCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "restore", Short: "Follow tenant restores (start one with plinth tenant restore)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get ID",
		Short: "Show a restore, its databases and their step times",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id, err := uuid.Parse(args[0])
			if err != nil {
				return fmt.Errorf("%q is not a restore ID", args[0])
			}
			r, err := c.GetRestore(cmd.Context(), id)
			if err != nil {
				return err
			}
			var took time.Duration
			if r.FinishedAt != nil {
				took = r.FinishedAt.Sub(r.CreatedAt)
			}
			return g.print(r, func(w io.Writer) { printRestore(w, r, took, false) })
		},
	})
	return cmd
}
