package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// ProvisionConfig configures `plinth bench provision`.
type ProvisionConfig struct {
	// Tenants is the size of each measured series.
	Tenants int
	// Scale is how many tenants the scale run provisions on one shard (0 skips it).
	Scale int
	// Concurrency of the scale run.
	Concurrency int
	// Exe is the plinth binary that runs the stack under test.
	Exe string
	// Progress receives one line per step.
	Progress io.Writer
}

// ProvisionReport is what `plinth bench provision` measured.
type ProvisionReport struct {
	Machine Machine `json:"machine"`
	Tenants int     `json:"tenants"`
	// Raw is CREATE DATABASE … TEMPLATE of the product template over one
	// open connection; Cold and Warm are Plinth end to end, API call to tenant active.
	Raw  Stats `json:"raw_create_database"`
	Cold Stats `json:"plinth_cold"`
	Warm Stats `json:"plinth_warm"`
	// ColdOverRawP50 is (b) p50 / (a) p50; target ≤ 1.2.
	ColdOverRawP50 float64 `json:"cold_over_raw_p50"`
	Scale          *Scale  `json:"scale,omitempty"`
}

// Scale is the result of provisioning many tenants on one shard.
type Scale struct {
	Tenants          int     `json:"tenants"`
	Errors           int     `json:"errors"`
	Seconds          float64 `json:"seconds"`
	PerSecond        float64 `json:"per_second"`
	IdleTenantConns  int     `json:"idle_tenant_connections"`
	ControlPlaneRSS  float64 `json:"control_plane_rss_mb"`
	DiskPerTenantMB  float64 `json:"disk_per_tenant_mb"`
	TemplateDiskMB   float64 `json:"template_disk_mb"`
	ShardConnections int     `json:"shard_connections"`
}

const benchToken = "bench-admin-token-0123456789"

// benchMigrations are the product the benchmark provisions: the same two
// migrations as plinth dev's sample product.
var benchMigrations = []catalog.Migration{
	{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());"},
	{Version: 2, Name: "note_authors", SQL: "-- +goose Up\nALTER TABLE notes ADD COLUMN author text NOT NULL DEFAULT '';\nCREATE INDEX notes_created_at ON notes (created_at DESC);"},
}

// Provision runs the provisioning benchmark on a stack of its own: a
// control cluster and one shard cluster made with the local PostgreSQL
// binaries, and `plinth serve --role all` as a subprocess.
func Provision(ctx context.Context, cfg ProvisionConfig) (*ProvisionReport, error) {
	if cfg.Tenants < 1 || cfg.Tenants > 1000 {
		return nil, errors.New("--tenants must be between 1 and 1000")
	}
	if cfg.Scale < 0 || cfg.Scale > 10000 {
		return nil, errors.New("--scale must be between 0 and 10000")
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 8
	}
	say := progressf(cfg.Progress)
	st, err := startStack(ctx, cfg.Exe, cfg.Tenants*3+cfg.Scale+100, say)
	if err != nil {
		return nil, err
	}
	defer st.stop()
	c := st.client
	rep := &ProvisionReport{Machine: machine(st.pgVersion), Tenants: cfg.Tenants}

	say("warming up (building the product template)…")
	if _, err := provisionOne(ctx, c, "warmup"); err != nil {
		return nil, err
	}

	say("(a) raw CREATE DATABASE … TEMPLATE and (b) Plinth cold provisioning, interleaved, %d each…", cfg.Tenants)
	if rep.Raw, rep.Cold, err = rawAndCold(ctx, c, st.shard.DSN("postgres"), cfg.Tenants); err != nil {
		return nil, err
	}
	rep.ColdOverRawP50 = rep.Cold.P50 / rep.Raw.P50

	say("(c) Plinth warm-pool provisioning, %d tenants (filling the pool first)…", cfg.Tenants)
	if _, err := c.SetWarmPool(ctx, "s1", "bench", cfg.Tenants); err != nil {
		return nil, err
	}
	if err := waitPool(ctx, c, cfg.Tenants); err != nil {
		return nil, err
	}
	if rep.Warm, err = provisionSeries(ctx, c, "warm", cfg.Tenants); err != nil {
		return nil, err
	}
	if _, err := c.SetWarmPool(ctx, "s1", "bench", 0); err != nil {
		return nil, err
	}

	if cfg.Scale > 0 {
		say("scale: %d tenants on one shard, %d at a time…", cfg.Scale, cfg.Concurrency)
		if rep.Scale, err = scaleRun(ctx, st, cfg.Scale, cfg.Concurrency); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// stack is the system under test.
type stack struct {
	dir       string
	control   *localpg.Cluster
	shard     *localpg.Cluster
	proc      *exec.Cmd
	client    *api.Client
	pgVersion string
}

func startStack(ctx context.Context, exe string, capacity int, say func(string, ...any)) (_ *stack, err error) {
	dir, err := os.MkdirTemp("", "plinth-bench-")
	if err != nil {
		return nil, err
	}
	st := &stack{dir: dir}
	defer func() {
		if err != nil {
			st.stop()
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = localpg.FreePort(); err != nil {
			return nil, err
		}
	}
	say("starting a control cluster and a shard cluster in %s…", dir)
	st.control = &localpg.Cluster{Dir: filepath.Join(dir, "control"), Port: ports[0], Settings: map[string]string{"max_connections": "200"}}
	st.shard = &localpg.Cluster{Dir: filepath.Join(dir, "shard"), Port: ports[1], Settings: map[string]string{"max_connections": "200", "wal_level": "logical"}}
	for _, c := range []*localpg.Cluster{st.control, st.shard} {
		if err := c.Init(ctx); err != nil {
			return nil, err
		}
		if _, err := c.Start(ctx); err != nil {
			return nil, err
		}
	}
	conn, err := pgx.Connect(ctx, st.control.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE plinth")
	if err == nil {
		err = conn.QueryRow(ctx, "SHOW server_version").Scan(&st.pgVersion)
	}
	conn.Close(ctx)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	st.proc = exec.CommandContext(ctx, exe, "serve", "--role", "all", "--listen", addr,
		"--database-url", st.control.DSN("plinth"), "--log-level", "warn", "--refill-interval", "1s")
	st.proc.Env = append(os.Environ(), "PLINTH_ADMIN_TOKEN="+benchToken)
	st.proc.Stderr = os.Stderr
	if err := st.proc.Start(); err != nil {
		return nil, fmt.Errorf("start %s serve: %w", exe, err)
	}
	st.client = api.NewClient("http://"+addr, benchToken)
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the plinth stack did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := st.client
	if _, err := c.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"}); err != nil {
		return nil, err
	}
	if _, err := c.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: st.shard.DSN("postgres"), Capacity: capacity}); err != nil {
		return nil, err
	}
	if _, err := c.RegisterProduct(ctx, api.RegisterProductRequest{Name: "bench", Migrations: benchMigrations, Default: true}); err != nil {
		return nil, err
	}
	return st, nil
}

func (st *stack) stop() {
	if st.proc != nil && st.proc.Process != nil {
		_ = st.proc.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = st.proc.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = st.proc.Process.Kill()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []*localpg.Cluster{st.control, st.shard} {
		if c != nil {
			_ = c.Stop(ctx)
		}
	}
	_ = os.RemoveAll(st.dir)
}

// rawAndCold alternates (a) CREATE DATABASE … TEMPLATE of the product
// template over one open connection and (b) a Plinth cold provisioning, so
// that both series run under the same background (checkpoints, WAL, the
// databases already on the shard). It drops the raw databases at the end.
func rawAndCold(ctx context.Context, c *api.Client, dsn string, n int) (raw, cold Stats, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return raw, cold, err
	}
	defer conn.Close(ctx)
	tpl := tenantdb.TemplateName("bench", benchMigrations[len(benchMigrations)-1].Version)
	rs := make([]time.Duration, 0, n)
	cs := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE raw_%d TEMPLATE %s", i, tpl)); err != nil {
			return raw, cold, err
		}
		rs = append(rs, time.Since(start))
		d, err := provisionOne(ctx, c, fmt.Sprintf("cold-%04d", i))
		if err != nil {
			return raw, cold, err
		}
		cs = append(cs, d)
	}
	for i := range n {
		if _, err := conn.Exec(ctx, fmt.Sprintf("DROP DATABASE raw_%d", i)); err != nil {
			return raw, cold, err
		}
	}
	return Summarise(rs), Summarise(cs), nil
}

// provisionOne creates a tenant and waits until it is active: the latency a
// caller sees from the API call to the tenant being usable.
func provisionOne(ctx context.Context, c *api.Client, slug string) (time.Duration, error) {
	start := time.Now()
	resp, err := c.CreateTenant(ctx, api.CreateTenantRequest{Slug: slug})
	if err != nil {
		return 0, err
	}
	op, err := c.WaitOperation(ctx, resp.Operation.ID.String(), nil)
	if err != nil {
		return 0, err
	}
	if op.State != catalog.OperationSucceeded {
		return 0, fmt.Errorf("provisioning %s failed: %s", slug, op.Error)
	}
	return time.Since(start), nil
}

func provisionSeries(ctx context.Context, c *api.Client, prefix string, n int) (Stats, error) {
	ds := make([]time.Duration, 0, n)
	for i := range n {
		d, err := provisionOne(ctx, c, fmt.Sprintf("%s-%04d", prefix, i))
		if err != nil {
			return Stats{}, err
		}
		ds = append(ds, d)
	}
	return Summarise(ds), nil
}

func waitPool(ctx context.Context, c *api.Client, size int) error {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		pools, err := c.ListWarmPools(ctx)
		if err != nil {
			return err
		}
		for _, p := range pools {
			if p.Shard == "s1" && p.Product == "bench" && p.Ready >= size {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("the warm pool did not fill within 10 minutes")
}

func scaleRun(ctx context.Context, st *stack, n, concurrency int) (*Scale, error) {
	var errCount atomic.Int64
	next := atomic.Int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				if _, err := provisionOne(ctx, st.client, fmt.Sprintf("scale-%05d", i)); err != nil {
					errCount.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	s := &Scale{Tenants: n, Errors: int(errCount.Load()), Seconds: took.Seconds(), PerSecond: float64(n) / took.Seconds()}
	// Let the pools' idle connections go before counting (admin pools drop
	// idle connections after 30s; tenant databases are never held).
	conn, err := pgx.Connect(ctx, st.shard.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 't\_%'),
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
		(SELECT avg(pg_database_size(datname)) / 1048576 FROM pg_database WHERE datname LIKE 't\_%'),
		(SELECT pg_database_size(datname) / 1048576.0 FROM pg_database WHERE datname LIKE 'tpl\_%' LIMIT 1)`).
		Scan(&s.IdleTenantConns, &s.ShardConnections, &s.DiskPerTenantMB, &s.TemplateDiskMB)
	if err != nil {
		return nil, err
	}
	if s.ControlPlaneRSS, err = rssMB(st.proc.Process.Pid); err != nil {
		return nil, err
	}
	return s, nil
}

// PrintProvision writes the report as a table, or as JSON.
func PrintProvision(w io.Writer, r *ProvisionReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "\nplinth bench provision: %d tenants per series, one shard, PostgreSQL %s, %d CPUs, %s\n\n",
		r.Tenants, r.Machine.Postgres, r.Machine.CPUs, r.Machine.Go)
	fmt.Fprintf(w, "%-44s %9s %9s %9s %9s\n", "series (ms)", "p50", "p95", "p99", "max")
	for _, s := range []struct {
		name string
		st   Stats
	}{
		{"(a) raw CREATE DATABASE … TEMPLATE", r.Raw},
		{"(b) Plinth cold: API call → tenant active", r.Cold},
		{"(c) Plinth warm pool: API call → active", r.Warm},
	} {
		fmt.Fprintf(w, "%-44s %9.1f %9.1f %9.1f %9.1f\n", s.name, s.st.P50, s.st.P95, s.st.P99, s.st.Max)
	}
	fmt.Fprintf(w, "\n(b)/(a) at p50: %.2f×  (target ≤ 1.2×)\n", r.ColdOverRawP50)
	fmt.Fprintf(w, "(c) p99: %.1f ms  (target ≤ 200 ms); (c)/(a) at p50: %.2f×\n", r.Warm.P99, r.Warm.P50/r.Raw.P50)
	if s := r.Scale; s != nil {
		fmt.Fprintf(w, "\nscale: %d tenants on one shard in %.1fs (%.1f/s), %d errors\n", s.Tenants, s.Seconds, s.PerSecond, s.Errors)
		fmt.Fprintf(w, "  connections held to tenant databases afterwards: %d (all client connections to the shard: %d)\n", s.IdleTenantConns, s.ShardConnections)
		fmt.Fprintf(w, "  control plane (API + worker) resident memory: %.1f MB  (target ≤ 150 MB)\n", s.ControlPlaneRSS)
		fmt.Fprintf(w, "  disk per tenant database: %.1f MB (the template: %.1f MB)\n", s.DiskPerTenantMB, s.TemplateDiskMB)
	}
	return nil
}
