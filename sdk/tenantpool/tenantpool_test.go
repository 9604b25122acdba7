package tenantpool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/testkit"
	"github.com/plinth-platform/plinth/sdk/tenantpool"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// fleet is tenant databases on the shared cluster, and a Connect that
// counts what it opened.
type fleet struct {
	c       *localpg.Cluster
	addr    string
	keys    []tenantpool.Key
	opened  atomic.Int64
	dbNames map[string]bool
	// live counts the sockets open to the server; peak is the most at once.
	live, peak atomic.Int64
}

// counted is a socket that tells the fleet when it closes.
type counted struct {
	net.Conn
	f    *fleet
	once sync.Once
}

func (c *counted) Close() error {
	c.once.Do(func() { c.f.live.Add(-1) })
	return c.Conn.Close()
}

func newFleet(t *testing.T, n int) *fleet {
	t.Helper()
	c := testkit.SharedCluster(t)
	f := &fleet{c: c, addr: "127.0.0.1:" + strconv.Itoa(c.Port), dbNames: map[string]bool{}}
	for range n {
		db := testkit.CreateDatabase(t, c, "")
		f.keys = append(f.keys, tenantpool.Key{Tenant: uuid.New(), Shard: "s1", Address: f.addr, Database: db})
		f.dbNames[db] = true
	}
	return f
}

func (f *fleet) connect(ctx context.Context, key tenantpool.Key) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(key.Address)
	cfg, err := pgx.ParseConfig(f.c.DSN(key.Database))
	if err != nil {
		return nil, err
	}
	cfg.Host = host
	p, _ := strconv.Atoi(port)
	cfg.Port = uint16(p)
	f.opened.Add(1)
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		n := f.live.Add(1)
		for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
		}
		return &counted{Conn: c, f: f}, nil
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// serverConns counts the server connections to the fleet's databases, as
// Postgres sees them.
func (f *fleet) serverConns(t *testing.T) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	names := make([]string, 0, len(f.dbNames))
	for n := range f.dbNames {
		names = append(names, n)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)`, names).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func newManager(t *testing.T, f *fleet, cfg tenantpool.Config) *tenantpool.Manager {
	t.Helper()
	cfg.Connect = f.connect
	m := tenantpool.New(cfg)
	t.Cleanup(m.Close)
	return m
}

// use runs one query on a connection to key's database and checks it is that database.
func use(ctx context.Context, m *tenantpool.Manager, key tenantpool.Key, hold time.Duration) error {
	c, err := m.Acquire(ctx, key)
	if err != nil {
		return err
	}
	defer c.Release()
	var db string
	if err := c.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return err
	}
	if db != key.Database {
		return fmt.Errorf("a connection for %s is on %s", key.Database, db)
	}
	time.Sleep(hold)
	return nil
}

// Many workers over many tenants never push the shard past the cap, never
// fail, and every connection reaches its own tenant's database.
func TestCapHoldsUnderLoad(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name             string
		tenants, workers int
		cap, share       int
		zipf             bool
		rounds           int
		// reuse: some acquires are served by an open connection (a hot
		// tenant's turn comes with its own connection; with turns over
		// many equal tenants few or none are).
		reuse bool
	}{
		{"uniform", 30, 40, 5, 0, false, 30, false},
		{"zipf, share 2", 30, 40, 6, 2, true, 30, true},
		{"one connection", 3, 10, 1, 0, false, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testkit.Context(t, 2*time.Minute)
			f := newFleet(t, tt.tenants)
			m := newManager(t, f, tenantpool.Config{ShardCap: tt.cap, TenantShare: tt.share, AcquireTimeout: time.Minute})
			var wg sync.WaitGroup
			errs := make(chan error, tt.workers)
			for w := range tt.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 1))
					z := rand.NewZipf(r, 1.2, 1, uint64(tt.tenants-1))
					for range tt.rounds {
						i := r.IntN(tt.tenants)
						if tt.zipf {
							i = int(z.Uint64())
						}
						if err := use(ctx, m, f.keys[i], time.Duration(r.IntN(2000))*time.Microsecond); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("a worker failed: %v", err)
			}
			// Counted at the socket: a connection's slot is reused only
			// once it is closed.
			if p := f.peak.Load(); p > int64(tt.cap) {
				t.Fatalf("%d connections were open at once, the cap is %d", p, tt.cap)
			}
			if f.opened.Load() <= int64(tt.cap) {
				t.Fatalf("only %d connections were opened: the load did not reach the cap", f.opened.Load())
			}
			st := m.Stats()
			for _, s := range st.Shards {
				if s.Open > tt.cap {
					t.Fatalf("shard %s has %d open, cap %d", s.Shard, s.Open, tt.cap)
				}
			}
			if st.Errors != 0 || st.Timeouts != 0 {
				t.Fatalf("errors %d, timeouts %d", st.Errors, st.Timeouts)
			}
			if tt.reuse && st.Hits == 0 {
				t.Fatal("no acquire reused a connection")
			}
		})
	}
}

// Idle connections are closed after IdleTimeout, and an idle tenant is
// forgotten entirely.
func TestIdleTenantsHoldNothing(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	f := newFleet(t, 5)
	// Long enough that the uses below finish inside it on a loaded machine.
	m := newManager(t, f, tenantpool.Config{ShardCap: 10, IdleTimeout: 3 * time.Second})
	for _, k := range f.keys {
		if err := use(ctx, m, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.serverConns(t); n != 5 {
		t.Fatalf("%d server connections after one use of 5 tenants, want 5 (kept idle)", n)
	}
	if err := use(ctx, m, f.keys[0], 0); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Hits != 1 || st.Connects != 5 {
		t.Fatalf("a second use of a tenant: hits %d, connects %d; want its idle connection reused", st.Hits, st.Connects)
	}
	testkit.Eventually(t, 30*time.Second, "idle connections to close", func() (bool, error) {
		n := f.serverConns(t)
		return n == 0, fmt.Errorf("%d server connections", n)
	})
	if st, sh := m.Stats(), shardStats(t, m, "s1"); st.Tenants != 0 || sh.Open != 0 || sh.Idle != 0 {
		t.Fatalf("after the idle timeout: %+v", st)
	}
}

// At the cap, a tenant that holds its share does not get the next
// connection while another tenant waits, even its own connection back.
func TestTurnsAreFair(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	f := newFleet(t, 3)
	a, b, c := f.keys[0], f.keys[1], f.keys[2]
	m := newManager(t, f, tenantpool.Config{ShardCap: 2, TenantShare: 1, AcquireTimeout: 30 * time.Second, Affinity: -1})
	a1, err := m.Acquire(ctx, a)
	must(t, err)
	a2, err := m.Acquire(ctx, a) // nobody waits: a may exceed its share
	must(t, err)

	got := make(chan string, 3)
	waitFor := func(name string, k tenantpool.Key) {
		go func() {
			conn, err := m.Acquire(ctx, k)
			if err != nil {
				got <- name + ": " + err.Error()
				return
			}
			got <- name
			t.Cleanup(conn.Release)
		}()
	}
	waiting := func(n int) {
		testkit.Eventually(t, 10*time.Second, fmt.Sprintf("%d waiters", n), func() (bool, error) {
			return shardStats(t, m, "s1").Waiting == n, nil
		})
	}
	waitFor("a3", a)
	waiting(1)
	waitFor("b1", b)
	waiting(2)
	waitFor("c1", c)
	waiting(3)

	// a queued first, but holds 2 (its share is 1) while b and c wait.
	a1.Release()
	if g := <-got; g != "b1" {
		t.Fatalf("the first freed connection went to %s, want b1", g)
	}
	a2.Release()
	if g := <-got; g != "c1" {
		t.Fatalf("the second freed connection went to %s, want c1", g)
	}
	// a now holds nothing; its waiter is served when a connection frees.
	m.Forget(b.Tenant) // b's connection is closed when released
	if st := shardStats(t, m, "s1"); st.Waiting != 1 {
		t.Fatalf("waiting = %d, want a3", st.Waiting)
	}
}

// A tenant whose database moved gets connections to the new one, and the
// old ones are closed; Forget closes a connection in use when released.
func TestMovedAndForgottenTenants(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	f := newFleet(t, 2)
	m := newManager(t, f, tenantpool.Config{ShardCap: 4})
	old := f.keys[0]
	must(t, use(ctx, m, old, 0))
	moved := old
	moved.Database = f.keys[1].Database
	must(t, use(ctx, m, moved, 0)) // checks it reached the new database
	testkit.Eventually(t, 10*time.Second, "the old database's connection to close", func() (bool, error) {
		n := f.serverConns(t)
		return n == 1, fmt.Errorf("%d server connections", n)
	})

	c, err := m.Acquire(ctx, moved)
	must(t, err)
	m.Forget(moved.Tenant)
	c.Release()
	testkit.Eventually(t, 10*time.Second, "the forgotten tenant's connection to close", func() (bool, error) {
		n := f.serverConns(t)
		return n == 0, fmt.Errorf("%d server connections", n)
	})
}

// Bad keys, a full shard, a cancelled wait, a shard that is down, a
// connection left in a transaction, and a closed manager.
func TestFailures(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	f := newFleet(t, 3)
	m := newManager(t, f, tenantpool.Config{ShardCap: 1, AcquireTimeout: 200 * time.Millisecond, IdleTimeout: time.Hour})

	for _, k := range []tenantpool.Key{{}, {Tenant: uuid.New(), Address: f.addr}, {Tenant: uuid.New(), Database: "x"}} {
		if _, err := m.Acquire(ctx, k); err == nil {
			t.Fatalf("Acquire(%+v) succeeded", k)
		}
	}

	held, err := m.Acquire(ctx, f.keys[0])
	must(t, err)
	if _, err := m.Acquire(ctx, f.keys[1]); !errors.Is(err, tenantpool.ErrTimeout) {
		t.Fatalf("a full shard: %v, want ErrTimeout", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := m.Acquire(cctx, f.keys[1]); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled wait: %v", err)
	}
	if st := shardStats(t, m, "s1"); st.Waiting != 0 || st.Open != 1 {
		t.Fatalf("after the failed waits: %+v", st)
	}

	// A shard that is down fails fast and clearly; the other is unaffected.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	deadAddr := l.Addr().String()
	l.Close()
	dead := tenantpool.Key{Tenant: uuid.New(), Shard: "down", Address: deadAddr, Database: f.keys[2].Database}
	if _, err := m.Acquire(ctx, dead); err == nil || !strings.Contains(err.Error(), "on shard down") {
		t.Fatalf("a shard that is down: %v", err)
	}
	if st := m.Stats(); st.Errors != 1 {
		t.Fatalf("Errors = %d, want 1", st.Errors)
	}

	// A connection released inside a transaction is closed, not reused.
	_, err = held.Exec(ctx, "BEGIN")
	must(t, err)
	pid := held.PgConn().PID()
	held.Release()
	again, err := m.Acquire(ctx, f.keys[0])
	must(t, err)
	if again.PgConn().PID() == pid {
		t.Fatal("a connection left in a transaction was handed out again")
	}
	again.Release()
	again.Release() // twice is once
	if st := shardStats(t, m, "s1"); st.Open != 1 || st.Idle != 1 {
		t.Fatalf("after a double release: %+v", st)
	}

	m.Close()
	if _, err := m.Acquire(ctx, f.keys[0]); !errors.Is(err, tenantpool.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func shardStats(t *testing.T, m *tenantpool.Manager, name string) tenantpool.ShardStats {
	t.Helper()
	for _, s := range m.Stats().Shards {
		if s.Shard == name {
			return s
		}
	}
	t.Fatalf("no stats for shard %s", name)
	return tenantpool.ShardStats{}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A shard that goes down: its tenants' requests fail fast with an error
// that names it while the other shard's tenants keep working, and its
// tenants are served again once it is back.
func TestShardDownAndBack(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 2*time.Minute)
	up := newFleet(t, 1)
	other := testkit.NewCluster(t)
	otherDB := testkit.CreateDatabase(t, other, "")
	downKey := tenantpool.Key{Tenant: uuid.New(), Shard: "s2", Address: "127.0.0.1:" + strconv.Itoa(other.Port), Database: otherDB}
	m := tenantpool.New(tenantpool.Config{ShardCap: 4, IdleTimeout: time.Hour, ConnectTimeout: 2 * time.Second,
		Connect: func(ctx context.Context, key tenantpool.Key) (*pgx.Conn, error) {
			if key.Shard == "s2" {
				return pgx.Connect(ctx, other.DSN(key.Database))
			}
			return up.connect(ctx, key)
		}})
	t.Cleanup(m.Close)
	must(t, use(ctx, m, downKey, 0)) // leaves an idle connection to s2
	must(t, use(ctx, m, up.keys[0], 0))

	must(t, other.Stop(ctx))
	// The idle connection died with the server: using it fails, and it is
	// not kept.
	_ = use(ctx, m, downKey, 0)
	for range 3 {
		err := use(ctx, m, downKey, 0)
		if err == nil || !strings.Contains(err.Error(), "on shard s2") {
			t.Fatalf("a tenant of the stopped shard: %v, want an error naming shard s2", err)
		}
		must(t, use(ctx, m, up.keys[0], 0)) // the other shard is unaffected
	}
	if st := shardStats(t, m, "s2"); st.Open != 0 {
		t.Fatalf("connections counted to a stopped shard: %+v", st)
	}

	_, err := other.Start(ctx)
	must(t, err)
	must(t, use(ctx, m, downKey, 0))
}
