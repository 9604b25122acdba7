package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
)

func serviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Register services and say who may call them"}
	var req api.ServiceRequest
	var allow, routes string
	flags := func(c *cobra.Command) {
		c.Flags().StringVar(&allow, "allow", "", "comma-separated services that may call this one")
		c.Flags().StringVar(&routes, "routes", "", "comma-separated path prefixes the edge sends to this service (/notes,/api/notes)")
		c.Flags().StringVar(&req.Product, "product", "", "the product whose tenant databases the service serves")
		c.Flags().BoolVar(&req.ReplayProtection, "replay-protection", false, "accept each token once (callers then mint one per request)")
		c.Flags().IntVar(&req.CallerRateLimit, "caller-limit", 0, "requests per second per caller (0: none)")
		c.Flags().IntVar(&req.TenantRateLimit, "tenant-limit", 0, "requests per second per tenant (0: none)")
	}
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Register a service; prints the registration credential its sidecars need (shown once)",
		Example: `  plinth service create notes --allow edge,tracker --caller-limit 200 --routes /notes --product notes
  PLINTH_SERVICE_CREDENTIAL=<credential> plinth serve --role sidecar --service notes --upstream http://127.0.0.1:8081`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			req.Name, req.AllowedCallers, req.Routes = args[0], splitList(allow), splitList(routes)
			out, err := c.CreateService(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(out, func(w io.Writer) {
				printServices(w, []catalog.Service{out.Service})
				fmt.Fprintf(w, "\nRegistration credential (shown once; give it to the service's sidecars):\n\n  %s\n", out.Credential)
			})
		},
	}
	flags(create)
	update := &cobra.Command{
		Use:   "update NAME",
		Short: "Change a service's allowed callers, routes, product, replay protection or rate limits (only the flags given)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			cur, err := c.GetService(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			f := cmd.Flags()
			next := api.ServiceRequest{AllowedCallers: cur.AllowedCallers, ReplayProtection: cur.ReplayProtection,
				CallerRateLimit: cur.CallerRateLimit, TenantRateLimit: cur.TenantRateLimit, Routes: cur.Routes, Product: cur.Product}
			if f.Changed("routes") {
				next.Routes = splitList(routes)
			}
			if f.Changed("product") {
				next.Product = req.Product
			}
			if f.Changed("allow") {
				next.AllowedCallers = splitList(allow)
			}
			if f.Changed("replay-protection") {
				next.ReplayProtection = req.ReplayProtection
			}
			if f.Changed("caller-limit") {
				next.CallerRateLimit = req.CallerRateLimit
			}
			if f.Changed("tenant-limit") {
				next.TenantRateLimit = req.TenantRateLimit
			}
			svc, err := c.UpdateService(cmd.Context(), args[0], next)
			if err != nil {
				return err
			}
			return g.print(svc, func(w io.Writer) { printServices(w, []catalog.Service{svc}) })
		},
	}
	flags(update)
	list := &cobra.Command{
		Use:   "list",
		Short: "List services",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			svcs, err := c.ListServices(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(svcs, func(w io.Writer) { printServices(w, svcs) })
		},
	}
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a service and its live instances",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			svc, err := c.GetService(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			eps, err := c.Endpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(map[string]any{"service": svc, "endpoints": eps.Endpoints}, func(w io.Writer) {
				printServices(w, []catalog.Service{svc})
				fmt.Fprintln(w)
				row(w, "INSTANCE", "ADDRESS")
				for _, e := range eps.Endpoints {
					row(w, e.ID, e.Address)
				}
			})
		},
	}
	cmd.AddCommand(create, update, list, get)
	return cmd
}

func printServices(w io.Writer, svcs []catalog.Service) {
	row(w, "NAME", "ALLOWED CALLERS", "ROUTES", "PRODUCT", "REPLAY PROTECTION", "CALLER LIMIT", "TENANT LIMIT", "KEY GENERATION")
	limit := func(n int) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%d/s", n)
	}
	for _, s := range svcs {
		row(w, s.Name, dash(strings.Join(s.AllowedCallers, ",")), dash(strings.Join(s.Routes, ",")), dash(s.Product),
			s.ReplayProtection, limit(s.CallerRateLimit),
			limit(s.TenantRateLimit), s.KeyGeneration)
	}
}

func keysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Service signing keys"}
	rotate := &cobra.Command{
		Use:   "rotate SERVICE",
		Short: "Make the service's sidecars generate, publish and switch to new keys (no request fails)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			svc, err := c.RotateKeys(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(svc, func(w io.Writer) {
				fmt.Fprintf(w, "Key generation of %s is now %d: its sidecars switch within a heartbeat (5s).\n", svc.Name, svc.KeyGeneration)
			})
		},
	}
	cmd.AddCommand(rotate)
	return cmd
}
