// Package testkit gives tests real services. Postgres: one local cluster
// shared by a test package (started on first use, stopped by Main), a fresh
// database per test, databases cloned from a template migrated once per
// package, and whole clusters of their own for tests that stop or kill a
// server. Redis: a client on the machine's test Redis.
//
// A test that cannot get a service fails when CI is set (a missing service is
// never a silent skip there) and is skipped with a message otherwise.
package testkit

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// Settings that make throwaway clusters fast; never use them for data you keep.
var fastSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"wal_level":          "logical",
	"max_connections":    "300",
	"shared_buffers":     "'64MB'",
}

var (
	sharedMu      sync.Mutex
	shared        *localpg.Cluster
	sharedErr     error
	cleanups      []func()
	templatesMu   sync.Mutex
	templates     = map[string]string{} // key -> template database name
	templateLocks = map[string]*sync.Mutex{}
)

// Main runs a package's tests and then stops the clusters testkit started.
// Call it from TestMain: func TestMain(m *testing.M) { testkit.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	sharedMu.Lock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	sharedMu.Unlock()
	os.Exit(code)
}

// Unavailable ends a test that cannot get a service it needs: a failure
// under CI, a skip with the reason otherwise.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("required service unavailable (CI is set, so this fails): %s", msg)
	}
	t.Skipf("skipping, service unavailable: %s (set CI=true to make this a failure)", msg)
}

// SharedCluster returns the package's shared Postgres cluster, starting it
// on first use.
func SharedCluster(t testing.TB) *localpg.Cluster {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = startCluster(context.Background(), "pkg")
		if shared != nil {
			c := shared
			cleanups = append(cleanups, func() { stopCluster(c) })
		}
	}
	if sharedErr != nil {
		Unavailable(t, "local Postgres cluster: %v", sharedErr)
	}
	return shared
}

// NewCluster starts a Postgres cluster for one test and stops it (and
// removes it) when the test ends. Use it for tests that stop a server.
func NewCluster(t testing.TB) *localpg.Cluster {
	t.Helper()
	c, err := startCluster(context.Background(), "own")
	if err != nil {
		Unavailable(t, "local Postgres cluster: %v", err)
	}
	t.Cleanup(func() { stopCluster(c) })
	return c
}

func startCluster(ctx context.Context, kind string) (*localpg.Cluster, error) {
	if _, err := localpg.FindBinDir(); err != nil {
		return nil, err
	}
	// Short paths under /tmp: the unprivileged user Postgres runs as (when
	// tests run as root) can reach them.
	dir, err := os.MkdirTemp("", "plinth-"+kind+"-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	c := &localpg.Cluster{Dir: dir + "/pg", Port: port, Settings: fastSettings}
	if err := c.Init(ctx); err != nil {
		return nil, err
	}
	if _, err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func stopCluster(c *localpg.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = c.Stop(ctx)
	_ = os.RemoveAll(strings.TrimSuffix(c.Dir, "/pg"))
}

// Dir returns a directory for the test, removed when it ends, that the
// unprivileged user Postgres runs as can enter (t.TempDir's parent is
// private to the test's user).
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "plinth-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// CreateDatabase creates a database with a random name on c (from template
// when not empty) and drops it when the test ends. It returns the name.
func CreateDatabase(t testing.TB, c *localpg.Cluster, template string) string {
	t.Helper()
	ctx := context.Background()
	name := "test_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatalf("connect to test cluster: %v", err)
	}
	defer conn.Close(ctx)
	sql := "CREATE DATABASE " + name
	if template != "" {
		sql += " TEMPLATE " + template
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return name
}

// MigratedDatabase returns a pool on a fresh database of the shared cluster,
// cloned from a template that migrate built once per test binary (key names
// the template, so different migrations get different templates).
func MigratedDatabase(t testing.TB, key string, migrate func(context.Context, *pgxpool.Pool) error) (*pgxpool.Pool, string) {
	t.Helper()
	c := SharedCluster(t)
	tpl := migratedTemplate(t, c, key, migrate)
	name := CreateDatabase(t, c, tpl)
	return Pool(t, c.DSN(name)), c.DSN(name)
}

func migratedTemplate(t testing.TB, c *localpg.Cluster, key string, migrate func(context.Context, *pgxpool.Pool) error) string {
	t.Helper()
	templatesMu.Lock()
	lock, ok := templateLocks[key]
	if !ok {
		lock = &sync.Mutex{}
		templateLocks[key] = lock
	}
	templatesMu.Unlock()
	lock.Lock()
	defer lock.Unlock()
	templatesMu.Lock()
	name, ok := templates[key]
	templatesMu.Unlock()
	if ok {
		return name
	}
	ctx := context.Background()
	name = "tpl_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatalf("connect to test cluster: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create template database: %v", err)
	}
	pool, err := pgxpool.New(ctx, c.DSN(name))
	if err != nil {
		t.Fatalf("open template database: %v", err)
	}
	err = migrate(ctx, pool)
	pool.Close()
	if err != nil {
		t.Fatalf("migrate template database: %v", err)
	}
	templatesMu.Lock()
	templates[key] = name
	templatesMu.Unlock()
	return name
}

// Pool opens a pool of up to 20 connections on dsn, closed when the test ends.
func Pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse dsn: %v", err)
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Context returns a context that ends with the test or after d, whichever
// comes first: a generous deadline for waiting on a state, never a timing
// assertion.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond until it returns true or the deadline passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", d, what, lastErr)
}

// Redis returns a client on the test Redis ($PLINTH_TEST_REDIS or
// 127.0.0.1:6379). Tests must use keys unique to themselves.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	addr := os.Getenv("PLINTH_TEST_REDIS")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		Unavailable(t, "Redis at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
