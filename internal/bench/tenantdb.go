package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/sdk/tenantpool"
)

// TenantDBConfig configures `plinth bench tenantdb`.
type TenantDBConfig struct {
	Tenants, Shards, Workers, Cap int
	// Share is the manager's TenantShare (0: its default).
	Share int
	// Affinity is the manager's Affinity (0: its default).
	Affinity time.Duration
	// MaxConnections is each shard's max_connections.
	MaxConnections int
	Zipf           float64
	Duration       time.Duration
	Progress       io.Writer
}

func (c *TenantDBConfig) defaults() error {
	c.Tenants = orInt(c.Tenants, 1000)
	c.Shards = orInt(c.Shards, 2)
	c.Workers = orInt(c.Workers, 200)
	c.Cap = orInt(c.Cap, 40)
	c.MaxConnections = orInt(c.MaxConnections, 100)
	if c.Zipf == 0 {
		c.Zipf = 1.1
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	switch {
	case c.Tenants < 2 || c.Tenants > 20_000:
		return errors.New("--tenants must be between 2 and 20000")
	case c.Shards < 1 || c.Shards > 8:
		return errors.New("--shards must be between 1 and 8")
	case c.Workers < 1 || c.Workers > 5000:
		return errors.New("--workers must be between 1 and 5000")
	case c.Cap < 1 || c.Cap >= c.MaxConnections-5:
		return fmt.Errorf("--cap must be between 1 and %d (the shards' max_connections less a few)", c.MaxConnections-6)
	case !(c.Zipf > 1 && c.Zipf <= 5):
		return errors.New("--zipf must be above 1 and at most 5")
	case c.Duration < time.Second || c.Duration > 10*time.Minute:
		return errors.New("--duration must be between 1s and 10m")
	}
	return nil
}

func orInt(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

// TenantDBReport is what `plinth bench tenantdb` measured.
type TenantDBReport struct {
	Machine        Machine       `json:"machine"`
	Tenants        int           `json:"tenants"`
	Shards         int           `json:"shards"`
	Workers        int           `json:"workers"`
	Cap            int           `json:"cap_per_shard"`
	MaxConnections int           `json:"max_connections_per_shard"`
	Zipf           float64       `json:"zipf_exponent"`
	Seconds        float64       `json:"seconds_per_run"`
	Rows           []TenantDBRow `json:"rows"`
	// After the manager's run and its idle timeout: what idle tenants hold.
	// IdleConnectMS is one connect (TCP, SCRAM, a backend) on an idle shard.
	IdleConnectMS      float64 `json:"idle_connect_ms"`
	IdleConnections    int     `json:"idle_tenants_connections"`
	IdleBytesPerTenant float64 `json:"idle_bytes_per_tenant"`
	ManagerOverNaive   float64 `json:"manager_over_naive"`
	ManagerOverShared  float64 `json:"manager_over_shared"`
}

// TenantDBRow is one contender's run.
type TenantDBRow struct {
	Name        string  `json:"name"`
	Ops         int64   `json:"ops"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Throughput  float64 `json:"ops_per_second"`
	Latency     Stats   `json:"latency"`
	HitRatio    float64 `json:"pool_hit_ratio"`
	ConnectsSec float64 `json:"connects_per_second"`
	ConnectMS   float64 `json:"mean_connect_ms"`
	PeakConns   int     `json:"peak_server_connections_per_shard"`
}

// TenantDB runs the tenant-database benchmark on shards of its own.
func TenantDB(ctx context.Context, cfg TenantDBConfig) (*TenantDBReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	say := progressf(cfg.Progress)
	rep := &TenantDBReport{Tenants: cfg.Tenants, Shards: cfg.Shards, Workers: cfg.Workers, Cap: cfg.Cap,
		MaxConnections: cfg.MaxConnections, Zipf: cfg.Zipf, Seconds: cfg.Duration.Seconds()}
	dir, err := os.MkdirTemp("", "plinth-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)

	say("starting %d shard clusters and creating %d tenant databases…", cfg.Shards, cfg.Tenants)
	shards := make([]*localpg.Cluster, cfg.Shards)
	for i := range shards {
		port, err := localpg.FreePort()
		if err != nil {
			return nil, err
		}
		shards[i] = &localpg.Cluster{Dir: filepath.Join(dir, "s"+strconv.Itoa(i)), Port: port,
			Settings: map[string]string{"max_connections": strconv.Itoa(cfg.MaxConnections), "shared_buffers": "64MB", "fsync": "off"}}
		if err := shards[i].Init(ctx); err != nil {
			return nil, err
		}
		if _, err := shards[i].Start(ctx); err != nil {
			return nil, err
		}
		defer func() { _ = shards[i].Stop(context.Background()) }()
	}
	// Tenant i lives on shard i % Shards, in database t<i>.
	keys := make([]tenantpool.Key, cfg.Tenants)
	for i := range keys {
		sh := shards[i%cfg.Shards]
		keys[i] = tenantpool.Key{Tenant: uuid.New(), Shard: "s" + strconv.Itoa(i%cfg.Shards),
			Address: "127.0.0.1:" + strconv.Itoa(sh.Port), Database: "t" + strconv.Itoa(i)}
	}
	var wg sync.WaitGroup
	errs := make([]error, cfg.Shards)
	for s := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[s] = createTenantDatabases(ctx, shards[s], keys, s, cfg.Shards)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var pgVersion string
	if conn, err := pgx.Connect(ctx, shards[0].DSN("postgres")); err == nil {
		_ = conn.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)
		conn.Close(ctx)
	}
	rep.Machine = machine(pgVersion)
	connCfg := func(key tenantpool.Key) (*pgx.ConnConfig, error) {
		s, err := strconv.Atoi(strings.TrimPrefix(key.Shard, "s"))
		if err != nil || s < 0 || s >= len(shards) {
			return nil, fmt.Errorf("no shard %s", key.Shard)
		}
		c, err := pgx.ParseConfig(shards[s].DSN(key.Database))
		if err != nil {
			return nil, err
		}
		host, port := splitAddr(key.Address)
		c.Host, c.Port = host, port
		return c, nil
	}
	load := tenantLoad{cfg: cfg, keys: keys, shards: shards}
	{
		c, err := connCfg(keys[0])
		if err != nil {
			return nil, err
		}
		const n = 20
		t0 := time.Now()
		for range n {
			conn, err := pgx.ConnectConfig(ctx, c)
			if err != nil {
				return nil, err
			}
			conn.Close(ctx)
		}
		rep.IdleConnectMS = float64(time.Since(t0)) / n / 1e6
	}

	// (c) the price of database-per-tenant: the same rows in one database
	// per shard, a pool of Cap per shard.
	say("(c) one shared database per shard, a pool of %d each, %s…", cfg.Cap, cfg.Duration)
	shared := make([]*pgxpool.Pool, cfg.Shards)
	for s := range shards {
		pc, err := pgxpool.ParseConfig(shards[s].DSN("shared"))
		if err != nil {
			return nil, err
		}
		pc.MaxConns = int32(cfg.Cap)
		if shared[s], err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, err
		}
		defer shared[s].Close()
	}
	rowC, err := load.run(ctx, "(c) shared database, tenant_id column", func(ctx context.Context, i, id int) error {
		var body string
		return shared[i%cfg.Shards].QueryRow(ctx, "SELECT body FROM items WHERE tenant_id = $1 AND id = $2", i, id).Scan(&body)
	}, func() (float64, int64) {
		var acq, made int64
		for _, p := range shared {
			st := p.Stat()
			acq, made = acq+st.AcquireCount(), made+st.NewConnsCount()
		}
		return poolHits(acq, made), made
	})
	if err != nil {
		return nil, err
	}
	for _, p := range shared {
		p.Close()
	}

	// (a) Plinth's connection manager.
	say("(a) Plinth's connection manager, cap %d per shard, %s…", cfg.Cap, cfg.Duration)
	var connectNS atomic.Int64
	m := tenantpool.New(tenantpool.Config{ShardCap: cfg.Cap, TenantShare: cfg.Share, Affinity: cfg.Affinity, IdleTimeout: 2 * time.Second, AcquireTimeout: 30 * time.Second,
		Connect: func(ctx context.Context, key tenantpool.Key) (*pgx.Conn, error) {
			c, err := connCfg(key)
			if err != nil {
				return nil, err
			}
			t0 := time.Now()
			defer func() { connectNS.Add(int64(time.Since(t0))) }()
			return pgx.ConnectConfig(ctx, c)
		}})
	defer func() {
		if m != nil {
			m.Close()
		}
	}()
	rowA, err := load.run(ctx, "(a) Plinth connection manager", func(ctx context.Context, i, id int) error {
		c, err := m.Acquire(ctx, keys[i])
		if err != nil {
			return err
		}
		defer c.Release()
		var body string
		return c.QueryRow(ctx, "SELECT body FROM items WHERE id = $1", id).Scan(&body)
	}, func() (float64, int64) {
		st := m.Stats()
		return poolHits(st.Hits+st.Connects, st.Connects), st.Connects
	})
	if err != nil {
		return nil, err
	}
	if n := m.Stats().Connects; n > 0 {
		rowA.ConnectMS = float64(connectNS.Load()) / float64(n) / 1e6
	}
	say("waiting for idle tenants to let go…")
	deadline := time.Now().Add(30 * time.Second)
	for m.Stats().Tenants > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // backends exit after their client closes
	for _, sh := range shards {
		n, err := clientConns(ctx, sh)
		if err != nil {
			return nil, err
		}
		rep.IdleConnections += n
	}
	// What the manager still holds for the idle tenants: the heap it frees
	// when it goes.
	held := heapAfterGC()
	m.Close()
	m = nil
	rep.IdleBytesPerTenant = max(float64(int64(held)-int64(heapAfterGC())), 0) / float64(cfg.Tenants)

	// (b) a pool per tenant, as a service would write it without a manager.
	say("(b) a pgxpool per tenant (MaxConns 4), %s…", cfg.Duration)
	var mu sync.Mutex
	pools := map[int]*pgxpool.Pool{}
	var connects atomic.Int64
	poolOf := func(ctx context.Context, i int) (*pgxpool.Pool, error) {
		mu.Lock()
		defer mu.Unlock()
		if p, ok := pools[i]; ok {
			return p, nil
		}
		c, err := connCfg(keys[i])
		if err != nil {
			return nil, err
		}
		pc, _ := pgxpool.ParseConfig("")
		pc.ConnConfig, pc.MaxConns = c, 4
		pc.BeforeConnect = func(context.Context, *pgx.ConnConfig) error { connects.Add(1); return nil }
		p, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return nil, err
		}
		pools[i] = p
		return p, nil
	}
	rowB, err := load.run(ctx, "(b) naive pool per tenant", func(ctx context.Context, i, id int) error {
		p, err := poolOf(ctx, i)
		if err != nil {
			return err
		}
		var body string
		return p.QueryRow(ctx, "SELECT body FROM items WHERE id = $1", id).Scan(&body)
	}, func() (float64, int64) {
		mu.Lock()
		defer mu.Unlock()
		var acq int64
		for _, p := range pools {
			acq += p.Stat().AcquireCount()
		}
		return poolHits(acq, connects.Load()), connects.Load()
	})
	mu.Lock()
	for _, p := range pools {
		p.Close()
	}
	mu.Unlock()
	if err != nil {
		return nil, err
	}
	rep.Rows = []TenantDBRow{*rowA, *rowB, *rowC}
	if rowB.Throughput > 0 {
		rep.ManagerOverNaive = rowA.Throughput / rowB.Throughput
	}
	rep.ManagerOverShared = rowA.Throughput / rowC.Throughput
	return rep, nil
}

func poolHits(acquires, connects int64) float64 {
	if acquires == 0 {
		return 0
	}
	return max(float64(acquires-connects), 0) / float64(acquires)
}

func splitAddr(addr string) (string, uint16) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			p, _ := strconv.ParseUint(addr[i+1:], 10, 16)
			return addr[:i], uint16(p)
		}
	}
	return addr, 5432
}

// createTenantDatabases makes a template with 100 rows, shard s's tenant
// databases from it, and the shared database holding all their rows.
func createTenantDatabases(ctx context.Context, c *localpg.Cluster, keys []tenantpool.Key, s, shards int) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, sql := range []string{"CREATE DATABASE tpl", "CREATE DATABASE shared"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return err
		}
	}
	for db, sql := range map[string]string{
		"tpl": `CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL);
			INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 100) g`,
		"shared": fmt.Sprintf(`CREATE TABLE items (tenant_id int, id int, body text NOT NULL, PRIMARY KEY (tenant_id, id));
			INSERT INTO items SELECT t, g, repeat('x', 100) FROM generate_series(%d, %d, %d) t, generate_series(1, 100) g`,
			s, len(keys)-1, shards),
	} {
		dc, err := pgx.Connect(ctx, c.DSN(db))
		if err != nil {
			return err
		}
		_, err = dc.Exec(ctx, sql)
		dc.Close(ctx)
		if err != nil {
			return err
		}
	}
	for i := s; i < len(keys); i += shards {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+keys[i].Database+" TEMPLATE tpl"); err != nil {
			return err
		}
	}
	return nil
}

// clientConns counts the client connections a shard serves, less the one
// asking.
func clientConns(ctx context.Context, c *localpg.Cluster) (int, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
	return n, err
}

// tenantLoad drives Workers goroutines over Zipf-distributed tenants.
type tenantLoad struct {
	cfg    TenantDBConfig
	keys   []tenantpool.Key
	shards []*localpg.Cluster
}

func (l tenantLoad) run(ctx context.Context, name string, op func(ctx context.Context, tenant, id int) error,
	pool func() (hit float64, connects int64)) (*TenantDBRow, error) {
	row := &TenantDBRow{Name: name}
	// Sample each shard's connections while the load runs.
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	samplers := make([]*pgx.Conn, len(l.shards))
	for i, sh := range l.shards {
		c, err := pgx.Connect(ctx, sh.DSN("postgres"))
		if err != nil {
			return nil, err
		}
		defer c.Close(context.Background())
		samplers[i] = c
	}
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, c := range samplers {
				var n int64
				if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n); err == nil && n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	}()
	_, connects0 := pool()
	var ops, errs atomic.Int64
	var first atomic.Value
	lat := make([][]time.Duration, l.cfg.Workers)
	var wg sync.WaitGroup
	deadline := time.Now().Add(l.cfg.Duration)
	start := time.Now()
	for w := range l.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			z := rand.NewZipf(r, l.cfg.Zipf, 1, uint64(len(l.keys)-1))
			perm := rand.New(rand.NewPCG(7, 7)).Perm(len(l.keys)) // rank → tenant, the same for every worker
			for time.Now().Before(deadline) && ctx.Err() == nil {
				i := perm[z.Uint64()]
				t0 := time.Now()
				err := op(ctx, i, 1+r.IntN(100))
				if err != nil {
					errs.Add(1)
					first.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond) // a failing contender does not spin
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	close(stop)
	<-sampled
	row.Ops, row.Errors = ops.Load(), errs.Load()
	if v, ok := first.Load().(string); ok {
		row.FirstError = v
	}
	row.Throughput = float64(row.Ops) / secs
	row.Latency = Summarise(slices.Concat(lat...))
	var connects int64
	row.HitRatio, connects = pool()
	row.ConnectsSec = float64(connects-connects0) / secs
	row.PeakConns = int(peak.Load())
	runtime.GC()
	return row, nil
}

// PrintTenantDB writes the report as a table, or as JSON.
func PrintTenantDB(w io.Writer, r *TenantDBReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	mark := func(ok bool) string {
		if ok {
			return "✓"
		}
		return "✗"
	}
	fmt.Fprintf(w, "\nplinth bench tenantdb: %d tenant databases on %d shards (max_connections %d), %d workers, Zipf %.2f, %.0fs per run, %d CPUs, %s\n\n",
		r.Tenants, r.Shards, r.MaxConnections, r.Workers, r.Zipf, r.Seconds, r.Machine.CPUs, r.Machine.Postgres)
	fmt.Fprintf(w, "%-40s %10s %8s %8s %8s %9s %11s %10s\n", "", "ops/s", "p50 ms", "p99 ms", "errors", "pool hit", "connects/s", "peak conns")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%-40s %10.0f %8.2f %8.2f %8d %8.1f%% %11.0f %10d\n", row.Name, row.Throughput, row.Latency.P50, row.Latency.P99,
			row.Errors, 100*row.HitRatio, row.ConnectsSec, row.PeakConns)
	}
	for _, row := range r.Rows {
		if row.FirstError != "" {
			fmt.Fprintf(w, "  %s, first error: %s\n", row.Name, row.FirstError)
		}
	}
	a, b := r.Rows[0], r.Rows[1]
	fmt.Fprintf(w, "\n(a) peak %d connections per shard, cap %d, %d errors %s; (b) peak %d, %d errors\n",
		a.PeakConns, r.Cap, a.Errors, mark(a.PeakConns <= r.Cap && a.Errors == 0), b.PeakConns, b.Errors)
	fmt.Fprintf(w, "(a)/(b) successful throughput: %.2f×  (target ≥ 2×) %s\n", r.ManagerOverNaive, mark(r.ManagerOverNaive >= 2))
	fmt.Fprintf(w, "(a)/(c) the price of database-per-tenant: %.2f×\n", r.ManagerOverShared)
	fmt.Fprintf(w, "one connect on an idle shard: %.1f ms; under load, the manager's connects took %.1f ms on average\n", r.IdleConnectMS, a.ConnectMS)
	fmt.Fprintf(w, "idle tenants after the idle timeout: %d server connections %s, %.0f bytes each in the manager (target ≤ 1 KB) %s\n",
		r.IdleConnections, mark(r.IdleConnections == 0), r.IdleBytesPerTenant, mark(r.IdleBytesPerTenant <= 1024))
	return nil
}
