package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/edge"
)

// edgeFlags are the flags of `plinth serve --role edge` (the control URL,
// credential file and Redis address are shared with the sidecar's).
type edgeFlags struct {
	region, baseDomain, listen, admin, advertise string
	staleFor, holdFor                            time.Duration
	tenantRate, tenantConcurrency                int
	accessLog                                    bool
}

func (f *edgeFlags) flags(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.region, "region", "", "edge: the region it serves")
	fs.StringVar(&f.baseDomain, "base-domain", edge.BaseDomainDefault, "edge: <tenant>.<base-domain> names a tenant")
	fs.StringVar(&f.listen, "edge-listen", ":8080", "edge: address it serves tenant traffic on")
	fs.StringVar(&f.admin, "edge-admin", "127.0.0.1:8081", "edge: address of /metrics, /healthz and /readyz")
	fs.StringVar(&f.advertise, "edge-advertise", "", "edge: URL other regions' edges reach it at")
	fs.DurationVar(&f.staleFor, "stale-for", 10*time.Minute, "edge: how long known tenants are served while the control plane is unreachable")
	fs.DurationVar(&f.holdFor, "hold-for", edge.HoldForDefault, "edge: how long a request for a moving or restoring tenant is held")
	fs.IntVar(&f.tenantRate, "tenant-rate", edge.TenantRateDefault, "edge: requests per second per tenant (-1: no limit)")
	fs.IntVar(&f.tenantConcurrency, "tenant-concurrency", edge.TenantConcurrencyDefault, "edge: requests in flight per tenant (-1: no cap)")
	fs.BoolVar(&f.accessLog, "access-log", true, "edge: a JSON access-log line per request on stderr")
}

func runEdge(ctx context.Context, f edgeFlags, sc sidecarFlags, logger *slog.Logger) error {
	cred, err := serviceCredential(sc.credentialFile)
	if err != nil {
		return err
	}
	if sc.controlURL == "" {
		sc.controlURL = os.Getenv("PLINTH_URL")
	}
	if f.staleFor < time.Second || f.holdFor <= 0 || f.holdFor > time.Minute {
		return fmt.Errorf("--stale-for must be at least 1s and --hold-for between 1ms and 1m")
	}
	cfg := edge.Config{
		Region: f.region, BaseDomain: f.baseDomain, Listen: f.listen, Admin: f.admin, Advertise: f.advertise,
		ControlURL: sc.controlURL, Credential: cred, StaleFor: f.staleFor, HoldFor: f.holdFor,
		TenantRate: f.tenantRate, TenantConcurrency: f.tenantConcurrency, Logger: logger,
	}
	if f.accessLog {
		cfg.AccessLog = logger
	}
	if sc.redis != "" {
		cfg.Redis = redis.NewClient(&redis.Options{Addr: sc.redis, DialTimeout: 200 * time.Millisecond,
			ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
		defer cfg.Redis.Close()
	}
	e, err := edge.New(cfg)
	if err != nil {
		return err
	}
	if err := e.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	logger.Info("edge draining")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.Stop(sctx)
}

// serviceCredential reads a registration credential from file, or from
// PLINTH_SERVICE_CREDENTIAL.
func serviceCredential(file string) (string, error) {
	if file == "" {
		return os.Getenv("PLINTH_SERVICE_CREDENTIAL"), nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--credential-file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

func tenantDomainCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "domain",
		Short: "Custom domains: claim one, prove control of it, and the edge serves the tenant there",
	}
	printDomains := func(w io.Writer, ds []api.DomainResponse) {
		row(w, "DOMAIN", "VERIFIED", "PROVE WITH (either)")
		for _, d := range ds {
			verified := "no"
			if d.VerifiedAt != nil {
				verified = ago(*d.VerifiedAt)
			}
			row(w, d.Domain, verified, "DNS: "+d.DNSRecord)
			row(w, "", "", "HTTP: "+d.HTTPURL+" answering "+d.Token)
		}
	}
	add := &cobra.Command{
		Use:     "add TENANT DOMAIN",
		Short:   "Claim a domain for a tenant and print how to prove control of it",
		Example: `  plinth tenant domain add acme support.acme.example`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.AddDomain(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return g.print(d, func(w io.Writer) {
				printDomains(w, []api.DomainResponse{d})
				fmt.Fprintf(w, "\nPublish the token, then: plinth tenant domain verify %s %s\n", args[0], d.Domain)
			})
		},
	}
	verify := &cobra.Command{
		Use:   "verify TENANT DOMAIN",
		Short: "Check the proof of control; once it holds, the edge serves the tenant on the domain",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.VerifyDomain(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return g.print(d, func(w io.Writer) { printDomains(w, []api.DomainResponse{d}) })
		},
	}
	list := &cobra.Command{
		Use:   "list TENANT",
		Short: "List a tenant's domains",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ds, err := c.ListDomains(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(ds, func(w io.Writer) { printDomains(w, ds) })
		},
	}
	remove := &cobra.Command{
		Use:   "remove TENANT DOMAIN",
		Short: "Stop serving a tenant on a domain",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RemoveDomain(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Printf("%s no longer serves %s\n", args[1], args[0])
			return nil
		},
	}
	cmd.AddCommand(add, verify, list, remove)
	return cmd
}
