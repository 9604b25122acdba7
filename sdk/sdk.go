// Package sdk is what a product service is written against: the tenant of
// the request, that tenant's database of this product, calls to other
// services through the sidecar, and a Run that wires configuration,
// logging, metrics and graceful shutdown. A product engineer never says
// which shard or database a tenant lives on.
//
//	func main() {
//		sdk.Run(func(app *sdk.App) (http.Handler, error) {
//			mux := http.NewServeMux()
//			mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
//				db, err := sdk.DB(r.Context())
//				if err != nil {
//					sdk.WriteError(w, r, err)
//					return
//				}
//				rows, err := db.Query(r.Context(), "SELECT id, name FROM items")
//				…
//			})
//			return mux, nil
//		})
//	}
//
// The service runs behind its sidecar, which verifies every caller's token
// and passes the verified tenant in the Plinth-Tenant-Id header (it strips
// any a client sent); or, with Config.VerifyTokens, it verifies tokens
// itself. A request without a verified tenant never gets a database.
package sdk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/plinth-platform/plinth/internal/tenantctx"
	"github.com/plinth-platform/plinth/sdk/serviceauth"
	"github.com/plinth-platform/plinth/sdk/tenantpool"
)

// Config configures an App. FromEnv reads it from PLINTH_* variables.
type Config struct {
	// Service is this service's name (PLINTH_SERVICE; default: Product).
	Service string
	// Product is the product whose tenant databases this service uses
	// (PLINTH_PRODUCT).
	Product string
	// ControlURL is the control plane (PLINTH_CONTROL_URL, or PLINTH_URL as
	// the CLI and the sidecar name it); Credential is
	// the service's registration credential (PLINTH_SERVICE_CREDENTIAL),
	// with which it reads tenant contexts.
	ControlURL, Credential string
	// Listen is where the service serves (PLINTH_LISTEN, 127.0.0.1:8081):
	// keep it on loopback behind a sidecar, which alone may reach it.
	Listen string
	// Admin, when set, serves /metrics and /healthz (PLINTH_ADMIN).
	Admin string
	// Egress is the sidecar's outbound address (PLINTH_EGRESS), for Client.
	Egress string
	// DBUser and DBPassword log in to the shards (PLINTH_DB_USER,
	// PLINTH_DB_PASSWORD).
	DBUser, DBPassword string
	// ShardCap bounds this process's connections per shard
	// (PLINTH_SHARD_CAP, 40); TenantShare and IdleTimeout are the
	// connection manager's (see tenantpool.Config).
	ShardCap    int
	TenantShare int
	IdleTimeout time.Duration
	// VerifyTokens verifies callers' tokens in process, for a service run
	// without a sidecar (PLINTH_VERIFY_TOKENS=1); AllowedCallers are the
	// services that may call it (PLINTH_ALLOWED_CALLERS, comma-separated).
	VerifyTokens   bool
	AllowedCallers []string
	Logger         *slog.Logger

	// contexts replaces the control plane's API (tests).
	contexts tenantctx.Fetcher
	// connect replaces the connection to tenant databases (tests, benches).
	connect func(ctx context.Context, key tenantpool.Key) (*pgx.Conn, error)
}

// FromEnv reads a Config from the environment.
func FromEnv() (Config, error) {
	cfg := Config{
		Service: os.Getenv("PLINTH_SERVICE"), Product: os.Getenv("PLINTH_PRODUCT"),
		ControlURL: cmp.Or(os.Getenv("PLINTH_CONTROL_URL"), os.Getenv("PLINTH_URL")), Credential: os.Getenv("PLINTH_SERVICE_CREDENTIAL"),
		Listen: os.Getenv("PLINTH_LISTEN"), Admin: os.Getenv("PLINTH_ADMIN"), Egress: os.Getenv("PLINTH_EGRESS"),
		DBUser: os.Getenv("PLINTH_DB_USER"), DBPassword: os.Getenv("PLINTH_DB_PASSWORD"),
		VerifyTokens: os.Getenv("PLINTH_VERIFY_TOKENS") == "1",
	}
	if v := os.Getenv("PLINTH_ALLOWED_CALLERS"); v != "" {
		cfg.AllowedCallers = strings.Split(v, ",")
	}
	if v := os.Getenv("PLINTH_SHARD_CAP"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10_000 {
			return cfg, fmt.Errorf("PLINTH_SHARD_CAP must be a number from 1 to 10000, not %q", v)
		}
		cfg.ShardCap = n
	}
	return cfg, nil
}

// App is a running product service's platform side: the tenant-context
// cache, the connection manager and the metrics.
type App struct {
	cfg     Config
	cache   *tenantctx.Cache
	pool    *tenantpool.Manager
	metrics *prometheus.Registry
	log     *slog.Logger
	stop    context.CancelFunc
	done    chan struct{}
}

var defaultApp atomic.Pointer[App]

// New returns an App; Start starts following tenant changes, Close stops it.
func New(cfg Config) (*App, error) {
	switch {
	case cfg.Product == "":
		return nil, errors.New("sdk: Product (PLINTH_PRODUCT) is required")
	case cfg.contexts == nil && (cfg.ControlURL == "" || cfg.Credential == ""):
		return nil, errors.New("sdk: ControlURL and Credential (PLINTH_CONTROL_URL, PLINTH_SERVICE_CREDENTIAL) are required")
	case cfg.VerifyTokens && (cfg.Service == "" || len(cfg.AllowedCallers) == 0):
		return nil, errors.New("sdk: verifying tokens needs Service and AllowedCallers")
	}
	cfg.Service = cmp.Or(cfg.Service, cfg.Product) // a product of one service names it so
	cfg.Listen = cmp.Or(cfg.Listen, "127.0.0.1:8081")
	cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	a := &App{cfg: cfg, log: cfg.Logger, metrics: prometheus.NewRegistry(), done: make(chan struct{})}
	fetch := cfg.contexts
	if fetch == nil {
		fetch = tenantctx.NewClient(cfg.ControlURL, cfg.Credential)
	}
	connect := cfg.connect
	if connect == nil {
		connect = a.connect
	}
	a.pool = tenantpool.New(tenantpool.Config{Connect: connect, ShardCap: cfg.ShardCap, TenantShare: cfg.TenantShare,
		IdleTimeout: cfg.IdleTimeout})
	a.cache = tenantctx.NewCache(tenantctx.Config{Fetcher: fetch, Logger: cfg.Logger,
		OnTenant: func(id uuid.UUID, tc *tenantctx.Context) {
			// A tenant suspended, moved, restored or gone: its connections go.
			if tc == nil || tc.State != "active" {
				a.pool.Forget(id)
			}
		}})
	a.registerMetrics()
	defaultApp.Store(a)
	return a, nil
}

// connect opens a connection to a tenant database with the configured
// login. The search path is pinned to public (Plinth's own schema is not
// the product's).
func (a *App) connect(ctx context.Context, key tenantpool.Key) (*pgx.Conn, error) {
	host, port, err := net.SplitHostPort(key.Address)
	if err != nil {
		return nil, fmt.Errorf("shard address %q: %w", key.Address, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("shard address %q: bad port", key.Address)
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.Database = host, uint16(p), key.Database
	cfg.User, cfg.Password = cmp.Or(a.cfg.DBUser, "postgres"), a.cfg.DBPassword
	cfg.RuntimeParams["search_path"] = "public"
	cfg.RuntimeParams["application_name"] = cmp.Or(a.cfg.Service, a.cfg.Product)
	return pgx.ConnectConfig(ctx, cfg)
}

// Start starts following the control plane's tenant changes.
func (a *App) Start(ctx context.Context) error {
	ctx, a.stop = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(a.done)
		a.cache.Run(ctx)
	}()
	return nil
}

// Close stops following changes and closes every tenant connection.
func (a *App) Close() {
	if a.stop != nil {
		a.stop()
		<-a.done
	}
	a.pool.Close()
	defaultApp.CompareAndSwap(a, nil)
}

// Pool is the App's connection manager (for its statistics).
func (a *App) Pool() *tenantpool.Manager { return a.pool }

// Handler puts the request's verified tenant into its context, for Tenant
// and DB. A request for a tenant that does not exist gets 404; one that
// cannot be looked up right now gets 503 (never a false 404).
func (a *App) Handler(next http.Handler) http.Handler {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), appKey{}, a)
		ctx = context.WithValue(ctx, traceKey{}, r.Header.Get("traceparent"))
		id, ok, err := a.tenantOf(r)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		if ok {
			tc, _, err := a.cache.LookupID(ctx, id)
			switch {
			case errors.Is(err, tenantctx.ErrNotFound):
				WriteError(w, r, ErrNoSuchTenant)
				return
			case err != nil:
				WriteError(w, r, fmt.Errorf("%w: %v", ErrUnavailable, err))
				return
			}
			ctx = context.WithValue(ctx, tenantKey{}, tc)
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
	if !a.cfg.VerifyTokens {
		return inner
	}
	h, err := serviceauth.Middleware(serviceauth.Config{Service: a.cfg.Service, KeyRepository: a.cfg.ControlURL,
		AllowedCallers: a.cfg.AllowedCallers}, inner)
	if err != nil { // New checked the configuration
		panic(err)
	}
	return h
}

// tenantOf finds the request's verified tenant: from the token this
// process verified, or from the header the sidecar set.
func (a *App) tenantOf(r *http.Request) (uuid.UUID, bool, error) {
	raw := ""
	if a.cfg.VerifyTokens {
		t, ok := serviceauth.TenantFrom(r.Context())
		if !ok {
			return uuid.Nil, false, nil
		}
		raw = t.ID
	} else {
		raw = r.Header.Get("Plinth-Tenant-Id")
		if raw == "" {
			return uuid.Nil, false, nil
		}
	}
	id, err := uuid.Parse(raw)
	if err != nil || id == uuid.Nil {
		return uuid.Nil, false, ErrNoSuchTenant
	}
	return id, true, nil
}

type (
	appKey    struct{}
	tenantKey struct{}
	traceKey  struct{}
)

// TenantInfo is the verified tenant of a request.
type TenantInfo struct {
	ID     uuid.UUID
	Slug   string
	State  string
	Tier   int
	Region string
}

// Tenant returns the verified tenant of the request ctx belongs to.
func Tenant(ctx context.Context) (TenantInfo, bool) {
	tc, ok := ctx.Value(tenantKey{}).(*tenantctx.Context)
	if !ok {
		return TenantInfo{}, false
	}
	return TenantInfo{ID: tc.TenantID, Slug: tc.Slug, State: string(tc.State), Tier: tc.Tier, Region: tc.Region}, true
}

// Errors DB and the middleware return; WriteError answers each with its
// problem.
var (
	ErrNoTenant      = errors.New("the request has no verified tenant")
	ErrNoSuchTenant  = errors.New("no such tenant")
	ErrNotActive     = errors.New("the tenant is not active")
	ErrNotInstalled  = errors.New("the tenant does not have this product")
	ErrUnavailable   = errors.New("the tenant's context cannot be looked up right now")
	errNoApp         = errors.New("sdk: the request did not pass through App.Handler")
	errDatabaseMoved = errors.New("the tenant's database moved; retry")
)

// DB returns the database of this product of the request's tenant. It
// fails (and nothing is opened) when the request has no verified tenant or
// the tenant is not active.
func DB(ctx context.Context) (*TenantDB, error) {
	a, ok := ctx.Value(appKey{}).(*App)
	if !ok {
		return nil, errNoApp
	}
	tc, ok := ctx.Value(tenantKey{}).(*tenantctx.Context)
	if !ok {
		return nil, ErrNoTenant
	}
	if tc.State != "active" {
		a.pool.Forget(tc.TenantID)
		return nil, fmt.Errorf("%w: it is %s", ErrNotActive, tc.State)
	}
	p, ok := tc.Placement(a.cfg.Product)
	if !ok || p.Database == "" || p.Address == "" {
		return nil, ErrNotInstalled
	}
	return &TenantDB{pool: a.pool, key: tenantpool.Key{Tenant: tc.TenantID, Shard: p.Shard, Address: p.Address, Database: p.Database}}, nil
}

// Run reads the configuration from the environment, builds the service
// with build, serves it behind App.Handler until SIGINT or SIGTERM, then
// drains (30 s at most) and closes. It exits the process on a start-up
// error.
func Run(build func(*App) (http.Handler, error)) {
	if err := run(build); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(build func(*App) (http.Handler, error)) error {
	cfg, err := FromEnv()
	if err != nil {
		return err
	}
	a, err := New(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	return a.Serve(ctx, build)
}

// Serve builds the service and serves it on Config.Listen (and the admin
// endpoints on Config.Admin) until ctx ends, then drains.
func (a *App) Serve(ctx context.Context, build func(*App) (http.Handler, error)) error {
	if err := a.Start(ctx); err != nil {
		return err
	}
	h, err := build(a)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
	}
	srv := &http.Server{Handler: a.Handler(h), ReadHeaderTimeout: 10 * time.Second}
	servers := []*http.Server{srv}
	errs := make(chan error, 2)
	go func() { errs <- srv.Serve(l) }()
	if a.cfg.Admin != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		al, err := net.Listen("tcp", a.cfg.Admin)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("listen on %s: %w", a.cfg.Admin, err)
		}
		admin := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, admin)
		go func() { errs <- admin.Serve(al) }()
	}
	a.log.Info("serving", "service", a.cfg.Service, "product", a.cfg.Product, "listen", l.Addr().String())
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	a.log.Info("draining")
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(dctx)
	}
	return nil
}

// registerMetrics exposes the connection manager's counters per shard and
// the tenant-context cache's.
func (a *App) registerMetrics() {
	a.metrics.MustRegister(poolCollector{a.pool}, prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "plinth_sdk_tenant_cache_hits_total", Help: "Tenant lookups answered from the cache.",
	}, func() float64 { return float64(a.cache.Stats.Hits.Load()) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "plinth_sdk_tenant_cache_misses_total", Help: "Tenant lookups the cache did not hold.",
	}, func() float64 { return float64(a.cache.Stats.Misses.Load()) }))
}

var (
	descOpen     = prometheus.NewDesc("plinth_sdk_db_connections_open", "Server connections open, per shard.", []string{"shard", "address"}, nil)
	descIdle     = prometheus.NewDesc("plinth_sdk_db_connections_idle", "Idle server connections, per shard.", []string{"shard", "address"}, nil)
	descWaiting  = prometheus.NewDesc("plinth_sdk_db_waiting", "Requests waiting for a connection, per shard.", []string{"shard", "address"}, nil)
	descConnects = prometheus.NewDesc("plinth_sdk_db_connects_total", "Connections opened, per shard.", []string{"shard", "address"}, nil)
	descHits     = prometheus.NewDesc("plinth_sdk_db_reuses_total", "Acquires served by an open connection, per shard.", []string{"shard", "address"}, nil)
	descSteals   = prometheus.NewDesc("plinth_sdk_db_steals_total", "Idle connections of one tenant closed for another at the cap.", []string{"shard", "address"}, nil)
	descTimeouts = prometheus.NewDesc("plinth_sdk_db_wait_timeouts_total", "Waits for a connection that gave up.", []string{"shard", "address"}, nil)
)

type poolCollector struct{ m *tenantpool.Manager }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpen, descIdle, descWaiting, descConnects, descHits, descSteals, descTimeouts} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.m.Stats().Shards {
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(s.Open), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, float64(s.Idle), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(s.Waiting), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descConnects, prometheus.CounterValue, float64(s.Connects), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(s.Hits), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descSteals, prometheus.CounterValue, float64(s.Steals), s.Shard, s.Address)
		ch <- prometheus.MustNewConstMetric(descTimeouts, prometheus.CounterValue, float64(s.Timeouts), s.Shard, s.Address)
	}
}
