package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// MigrateConfig configures `plinth bench migrate`.
type MigrateConfig struct {
	Exe         string
	Tenants     int
	Concurrency int // Plinth's (0: the CLI's default)
	Progress    io.Writer
}

// MigrateReport is what `plinth bench migrate` measured.
type MigrateReport struct {
	Machine     Machine `json:"machine"`
	Tenants     int     `json:"tenants"`
	Concurrency int     `json:"concurrency"`
	// The same kind of change (a column and an index) by each.
	PsqlSeconds   float64 `json:"psql_loop_seconds"`
	PlinthSeconds float64 `json:"plinth_seconds"`
	Speedup       float64 `json:"speedup"`
	PsqlFailed    int     `json:"psql_failed"`
	PlinthFailed  int     `json:"plinth_failed"`
	PlinthState   string  `json:"plinth_state"`
}

// The change each contender applies: the same shape, different names.
const (
	psqlChange   = "ALTER TABLE notes ADD COLUMN tags_b text[] NOT NULL DEFAULT '{}';\nCREATE INDEX notes_tags_b ON notes (created_at, author);\n"
	plinthChange = "-- +goose Up\nALTER TABLE notes ADD COLUMN tags_a text[] NOT NULL DEFAULT '{}';\nCREATE INDEX notes_tags_a ON notes (created_at, author);\n"
)

// Migrate provisions the tenants on a stack of its own, then migrates every
// tenant database with (a) a sequential psql -f loop and (b) Plinth's
// fleet migration at its default concurrency.
func Migrate(ctx context.Context, cfg MigrateConfig) (*MigrateReport, error) {
	if cfg.Tenants == 0 {
		cfg.Tenants = 1000
	}
	if cfg.Tenants < 1 || cfg.Tenants > 10_000 {
		return nil, errors.New("--tenants must be between 1 and 10000")
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = api.MigrateConcurrencyDefault
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > 256 {
		return nil, errors.New("--concurrency must be between 1 and 256")
	}
	say := progressf(cfg.Progress)
	psql, err := findPsql()
	if err != nil {
		return nil, err
	}
	st, err := startStack(ctx, cfg.Exe, cfg.Tenants+100, say)
	if err != nil {
		return nil, err
	}
	defer st.stop()
	rep := &MigrateReport{Machine: machine(st.pgVersion), Tenants: cfg.Tenants, Concurrency: cfg.Concurrency}
	say("provisioning %d tenants…", cfg.Tenants)
	if s, err := scaleRun(ctx, st, cfg.Tenants, 8); err != nil {
		return nil, err
	} else if s.Errors > 0 {
		return nil, fmt.Errorf("%d tenants failed to provision", s.Errors)
	}
	dbs, err := tenantDatabases(ctx, st)
	if err != nil {
		return nil, err
	}
	if len(dbs) != cfg.Tenants {
		return nil, fmt.Errorf("%d tenant databases, want %d", len(dbs), cfg.Tenants)
	}

	say("(a) psql -f over each tenant database in turn…")
	file := filepath.Join(st.dir, "change.sql")
	if err := os.WriteFile(file, []byte(psqlChange), 0o644); err != nil {
		return nil, err
	}
	start := time.Now()
	for _, db := range dbs {
		cmd := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", file, st.shard.DSN(db))
		if out, err := cmd.CombinedOutput(); err != nil {
			rep.PsqlFailed++
			if rep.PsqlFailed == 1 {
				say("  psql failed on %s: %v %s", db, err, out)
			}
		}
	}
	rep.PsqlSeconds = time.Since(start).Seconds()

	say("(b) plinth product migrate, concurrency %d…", cfg.Concurrency)
	if _, err := st.client.RegisterProduct(ctx, api.RegisterProductRequest{Name: "bench",
		Migrations: append(benchMigrations[:len(benchMigrations):len(benchMigrations)], catalog.Migration{
			Version: int64(len(benchMigrations) + 1), Name: "tags", SQL: plinthChange})}); err != nil {
		return nil, err
	}
	start = time.Now()
	canary := 1
	resp, err := st.client.StartMigration(ctx, "bench", api.MigrateRequest{Concurrency: cfg.Concurrency, Canary: &canary})
	if err != nil {
		return nil, err
	}
	for resp.Run.FinishedAt == nil && resp.Run.State == catalog.RunRunning {
		time.Sleep(50 * time.Millisecond)
		if resp, err = st.client.GetMigration(ctx, resp.Run.ID.String()); err != nil {
			return nil, err
		}
	}
	rep.PlinthSeconds = time.Since(start).Seconds()
	rep.PlinthFailed = resp.Run.Tasks["failed"] + resp.Run.Tasks["skipped"]
	rep.PlinthState = resp.Run.State
	rep.Speedup = rep.PsqlSeconds / rep.PlinthSeconds
	return rep, nil
}

// findPsql finds psql beside the server binaries or on PATH.
func findPsql() (string, error) {
	if bin, err := localpg.FindBinDir(); err == nil {
		for _, dir := range []string{bin, filepath.Dir(evalLink(filepath.Join(bin, "initdb")))} {
			if p := filepath.Join(dir, "psql"); fileExists(p) {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("psql"); err == nil {
		return p, nil
	}
	return "", errors.New("psql is needed for the comparison (apt install postgresql-client)")
}

func evalLink(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// tenantDatabases lists the assigned tenant databases on the stack's shard.
func tenantDatabases(ctx context.Context, st *stack) ([]string, error) {
	conn, err := pgx.Connect(ctx, st.shard.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 't\_%' ORDER BY datname`)
	if err != nil {
		return nil, err
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	// Only those that carry a tenant (not the warm pool's).
	var dbs []string
	for _, db := range all {
		c, err := pgx.Connect(ctx, st.shard.DSN(db))
		if err != nil {
			return nil, err
		}
		var tenant *string
		err = c.QueryRow(ctx, `SELECT tenant_id::text FROM plinth.identity`).Scan(&tenant)
		c.Close(ctx)
		if err == nil && tenant != nil {
			dbs = append(dbs, db)
		}
	}
	return dbs, nil
}

// PrintMigrate writes the report as a table, or as JSON.
func PrintMigrate(w io.Writer, r *MigrateReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	mark := "✗"
	if r.Speedup >= 3 && r.PlinthFailed == 0 {
		mark = "✓"
	}
	fmt.Fprintf(w, "\nplinth bench migrate: %d tenant databases on one shard, %d CPUs, %s\n\n", r.Tenants, r.Machine.CPUs, r.Machine.Postgres)
	fmt.Fprintf(w, "%-46s %10s %10s %8s\n", "", "seconds", "tenants/s", "failed")
	fmt.Fprintf(w, "%-46s %10.1f %10.1f %8d\n", "(a) sequential psql -f loop", r.PsqlSeconds, float64(r.Tenants)/r.PsqlSeconds, r.PsqlFailed)
	fmt.Fprintf(w, "%-46s %10.1f %10.1f %8d\n", fmt.Sprintf("(b) plinth product migrate, concurrency %d", r.Concurrency),
		r.PlinthSeconds, float64(r.Tenants)/r.PlinthSeconds, r.PlinthFailed)
	fmt.Fprintf(w, "\n(b) is %.2f× faster than (a)  (target ≥ 3× with no failed tenant) %s; the run ended %s\n", r.Speedup, mark, r.PlinthState)
	return nil
}
