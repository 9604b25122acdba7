package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/bench"
)

func benchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks that measure Plinth against its competitor in the same run"}
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
	cmd.AddCommand(provision)
	return cmd
}
