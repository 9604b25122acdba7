package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/spf13/cobra"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/backup"
)

func backupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up the shards Plinth runs (pgBackRest) and list their backups",
	}
	cmd.AddCommand(backupRunCmd(g), backupListCmd(g), backupVerifyCmd(g), backupSettingsCmd())
	return cmd
}

func backupRunCmd(g *globals) *cobra.Command {
	var shards []string
	var typ string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Back up shards now (every backed-up shard unless --shard)",
		Long: `Takes a backup of each shard with pgBackRest and waits until it is in the
repository: full (the default), diff (changes since the last full backup) or
incr (changes since the last backup of any kind). Each backup is a durable
job on a worker (POST /v1/backups): if you stop waiting, or Plinth restarts,
it goes on. WAL is archived
continuously besides, so a restore can reach any moment after the oldest
kept backup. "control" names the control database.`,
		Example: `  plinth backup run
  plinth backup run --shard shard-1 --type incr`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch backup.Type(typ) {
			case backup.Full, backup.Differential, backup.Incremental:
			default:
				return fmt.Errorf("--type must be full, diff or incr, not %q", typ)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if len(shards) == 0 {
				infos, err := c.ListBackups(cmd.Context())
				if err != nil {
					return err
				}
				for _, in := range infos {
					shards = append(shards, in.Name)
				}
			}
			var done []backup.Info
			for _, sh := range shards {
				in, err := c.RunBackup(cmd.Context(), api.BackupRequest{Shard: sh, Type: typ})
				if err != nil {
					return fmt.Errorf("back up %s: %w", sh, err)
				}
				done = append(done, in)
			}
			return g.print(done, func(w io.Writer) { printBackups(w, done) })
		},
	}
	cmd.Flags().StringSliceVar(&shards, "shard", nil, "shard to back up (repeatable; default: all)")
	cmd.Flags().StringVar(&typ, "type", string(backup.Full), "full, diff or incr")
	return cmd
}

func backupListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List each shard's backups and WAL archive",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			infos, err := c.ListBackups(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(infos, func(w io.Writer) { printBackups(w, infos) })
		},
	}
}

func printBackups(w io.Writer, infos []backup.Info) {
	row(w, "SHARD", "STATUS", "BACKUP", "TYPE", "STOPPED", "SIZE", "IN REPO", "WAL ARCHIVED TO")
	for _, in := range infos {
		if len(in.Backups) == 0 {
			row(w, in.Name, in.Status, "-", "-", "-", "-", "-", orDash(in.ArchiveMax))
		}
		for _, b := range in.Backups {
			row(w, in.Name, in.Status, b.Label, b.Type, ago(b.Stop), mib(b.Size), mib(b.RepoSize), orDash(in.ArchiveMax))
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func backupVerifyCmd(g *globals) *cobra.Command {
	var shards []string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every file of the backups and archived WAL against its checksum",
		Long: `Reads every file of each shard's backups and archived WAL in the repository
(pgbackrest verify) and checks it against the checksum recorded when it was
written. A missing or corrupted file fails its shard, and is named; the
command then exits non-zero.`,
		Example: `  plinth backup verify
  plinth backup verify --shard shard-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			results, err := c.VerifyBackups(cmd.Context(), api.VerifyRequest{Shards: shards})
			if err != nil {
				return err
			}
			failed := 0
			if err := g.print(results, func(w io.Writer) {
				row(w, "SHARD", "RESULT", "TOOK", "DETAIL")
				for _, r := range results {
					result := "ok"
					if !r.OK {
						result = "FAILED"
					}
					row(w, r.Shard, result, ms(&r.TookMS), orDash(r.Detail))
				}
			}); err != nil {
				return err
			}
			for _, r := range results {
				if !r.OK {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d shard(s) failed verification", failed)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&shards, "shard", nil, "shard to verify (repeatable; default: all)")
	return cmd
}

func backupSettingsCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "settings --backup-config FILE",
		Short: "Print the postgresql.conf settings each shard on this host needs to archive its WAL",
		Long: `Reads the --backup-config file plinth serve uses and prints, per shard, the
settings that make its server archive WAL continuously into the repository
(archive_mode needs a restart of the server; archive_command and
archive_timeout a reload). Put them in the server's postgresql.conf, or run
ALTER SYSTEM SET for each. The settings name pgBackRest's configuration file,
which plinth serve (and this command) writes under the config's home.`,
		Example: `  plinth backup settings --backup-config /etc/plinth/backup.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("--backup-config is required")
			}
			br, err := openBackupConfig(file)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, name := range br.Stanzas() {
				fmt.Fprintf(w, "# shard %s\n", name)
				settings := br.ArchiveSettings(name)
				for _, k := range slices.Sorted(maps.Keys(settings)) {
					fmt.Fprintf(w, "%s = %s\n", k, settings[k])
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "backup-config", "", "the backup configuration file of plinth serve")
	return cmd
}
