package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
)

func tenantCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tenant", Short: "Create, inspect and change tenants (named by slug or ID)"}
	cmd.AddCommand(tenantCreateCmd(g), tenantListCmd(g), tenantGetCmd(g), tenantHistoryCmd(g), tenantDomainCmd(g), tenantRestoreCmd(g))
	for _, a := range catalog.Actions {
		cmd.AddCommand(tenantActionCmd(g, a))
	}
	return cmd
}

func tenantCreateCmd(g *globals) *cobra.Command {
	var req api.CreateTenantRequest
	var tier int
	var waitFlag bool
	cmd := &cobra.Command{
		Use:   "create SLUG",
		Short: "Create a tenant and provision its databases",
		Example: `  plinth tenant create acme --wait
  plinth tenant create globex --name "Globex Corp" --tier 1 --product notes`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			req.Slug = args[0]
			if cmd.Flags().Changed("tier") {
				req.Tier = &tier
			}
			resp, err := c.CreateTenant(cmd.Context(), req)
			if err != nil {
				return err
			}
			t := resp.Tenant
			if waitFlag {
				if err := wait(cmd.Context(), c, resp.Operation, "provisioning "+t.Slug); err != nil {
					return err
				}
				if t, err = c.GetTenant(cmd.Context(), t.ID.String()); err != nil {
					return err
				}
			}
			return g.print(api.TenantResponse{Tenant: t, Operation: resp.Operation}, func(w io.Writer) {
				printTenant(w, t)
				if !waitFlag {
					fmt.Fprintf(w, "\nProvisioning in the background (operation %s); `plinth tenant get %s` shows progress.\n", resp.Operation.ID, t.Slug)
				}
			})
		},
	}
	cmd.Flags().StringVar(&req.DisplayName, "name", "", "display name (default: the slug)")
	cmd.Flags().StringVar(&req.Region, "region", "", "home region (default: the only region)")
	cmd.Flags().IntVar(&tier, "tier", api.TenantTierDefault, "tier, 0 (most critical) to 3")
	cmd.Flags().StringSliceVar(&req.Products, "product", nil, "product to enable (repeatable; default: the default product)")
	cmd.Flags().BoolVar(&waitFlag, "wait", false, "wait until the tenant is active")
	return cmd
}

func printTenant(w io.Writer, t catalog.Tenant) {
	row(w, "Slug:", t.Slug)
	row(w, "ID:", t.ID)
	row(w, "Name:", t.DisplayName)
	row(w, "State:", t.State)
	if t.StateReason != "" {
		row(w, "Reason:", t.StateReason)
	}
	row(w, "Region:", t.Region)
	row(w, "Tier:", t.Tier)
	row(w, "Created:", t.CreatedAt.Format("2006-01-02 15:04:05Z07:00"))
	if t.PurgeAfter != nil {
		row(w, "Purge after:", t.PurgeAfter.Format("2006-01-02 15:04:05Z07:00"))
	}
	fmt.Fprintln(w)
	row(w, "PRODUCT", "STATE", "SHARD", "DATABASE", "SCHEMA")
	for _, in := range t.Installations {
		row(w, in.Product, in.State, dash(in.Shard), dash(in.Database), in.SchemaVersion)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func tenantListCmd(g *globals) *cobra.Command {
	var q api.TenantQuery
	var all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tenants",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var tenants []catalog.Tenant
			for {
				page, err := c.ListTenants(cmd.Context(), q)
				if err != nil {
					return err
				}
				tenants = append(tenants, page.Items...)
				if !all || page.NextCursor == "" {
					q.Cursor = page.NextCursor
					break
				}
				q.Cursor = page.NextCursor
			}
			return g.print(api.List[catalog.Tenant]{Items: tenants, NextCursor: q.Cursor}, func(w io.Writer) {
				row(w, "SLUG", "ID", "STATE", "REGION", "TIER", "PRODUCTS", "CREATED")
				for _, t := range tenants {
					var ps []string
					for _, in := range t.Installations {
						ps = append(ps, in.Product)
					}
					row(w, t.Slug, t.ID, t.State, t.Region, t.Tier, strings.Join(ps, ","), ago(t.CreatedAt))
				}
				if q.Cursor != "" {
					fmt.Fprintf(w, "\nMore tenants: --cursor %s, or --all.\n", q.Cursor)
				}
			})
		},
	}
	cmd.Flags().StringVar(&q.State, "state", "", "only tenants in this state")
	cmd.Flags().StringVar(&q.Region, "region", "", "only tenants homed in this region")
	cmd.Flags().StringVar(&q.Shard, "shard", "", "only tenants with a database on this shard")
	cmd.Flags().StringVar(&q.Product, "product", "", "only tenants with this product")
	cmd.Flags().StringVar(&q.Cursor, "cursor", "", "start after this cursor (from a previous page)")
	cmd.Flags().IntVar(&q.Limit, "limit", 100, "page size, 1 to 500")
	cmd.Flags().BoolVar(&all, "all", false, "fetch every page")
	return cmd
}

func tenantGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get TENANT",
		Short: "Show a tenant and its databases",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.GetTenant(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(t, func(w io.Writer) { printTenant(w, t) })
		},
	}
}

func tenantHistoryCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history TENANT",
		Short: "Show a tenant's audit history: who did what, when and why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			entries, err := c.TenantAudit(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(entries, func(w io.Writer) {
				row(w, "AT", "ACTOR", "ACTION", "FROM", "TO", "REASON")
				for _, e := range entries {
					row(w, e.At.Format("2006-01-02 15:04:05"), e.Actor, e.Action, dash(e.FromState), dash(e.ToState), dash(e.Reason))
				}
			})
		},
	}
}

var actionHelp = map[catalog.Action]string{
	catalog.ActionSuspend:    "Suspend an active tenant (its users get 403)",
	catalog.ActionResume:     "Resume a suspended or deactivated tenant",
	catalog.ActionDeactivate: "Deactivate a tenant",
	catalog.ActionDelete:     "Delete a tenant: data is kept for the retention window and can be undeleted",
	catalog.ActionUndelete:   "Undo a delete: the tenant returns to the state it had",
	catalog.ActionPurge:      "Drop a deleted tenant's databases (needs --reason; backups still hold them)",
	catalog.ActionRetry:      "Retry a failed provisioning",
}

func tenantActionCmd(g *globals, a catalog.Action) *cobra.Command {
	var reason string
	var waitFlag bool
	cmd := &cobra.Command{
		Use:   string(a) + " TENANT",
		Short: actionHelp[a],
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a == catalog.ActionPurge && strings.TrimSpace(reason) == "" {
				return fmt.Errorf("purge drops the tenant's databases: say why with --reason")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.TenantAction(cmd.Context(), args[0], a, reason)
			if err != nil {
				return err
			}
			t := resp.Tenant
			if waitFlag && resp.Operation != nil {
				if err := wait(cmd.Context(), c, resp.Operation, string(a)+" "+t.Slug); err != nil {
					return err
				}
				if t, err = c.GetTenant(cmd.Context(), t.ID.String()); err != nil {
					return err
				}
			}
			return g.print(api.TenantResponse{Tenant: t, Operation: resp.Operation}, func(w io.Writer) {
				fmt.Fprintf(w, "Tenant %s is %s.\n", t.Slug, t.State)
				if resp.Operation != nil && !waitFlag {
					fmt.Fprintf(w, "Working in the background (operation %s).\n", resp.Operation.ID)
				}
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
	if a == catalog.ActionPurge || a == catalog.ActionRetry {
		cmd.Flags().BoolVar(&waitFlag, "wait", false, "wait until the work is done")
	}
	return cmd
}

func operationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "operation", Short: "Inspect long-running operations"}
	var waitFlag bool
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show an operation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			op, err := c.GetOperation(cmd.Context(), args[0], 0)
			if err != nil {
				return err
			}
			if waitFlag {
				if err := wait(cmd.Context(), c, &op, op.Kind); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
				if op, err = c.GetOperation(cmd.Context(), args[0], 0); err != nil {
					return err
				}
			}
			return g.print(op, func(w io.Writer) {
				row(w, "ID:", op.ID)
				row(w, "Kind:", op.Kind)
				row(w, "State:", op.State)
				if op.TenantID != nil {
					row(w, "Tenant:", *op.TenantID)
				}
				if op.Error != "" {
					row(w, "Error:", op.Error)
				}
				row(w, "Created:", ago(op.CreatedAt))
			})
		},
	}
	get.Flags().BoolVar(&waitFlag, "wait", false, "wait until it finishes")
	cmd.AddCommand(get)
	return cmd
}
