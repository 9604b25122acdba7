// Package edge is Plinth's edge router: the HTTP entry point of a region.
// For each request it finds the tenant from the Host header (<slug>.<base
// domain>, or a custom domain the tenant proved it controls), looks up the
// tenant's context in an in-process cache kept current by the control
// plane's change feed, answers for the tenant's state (404, 403, 410, 503,
// or holds the request briefly while the tenant moves or is restored),
// forwards tenants homed in another region to that region's edge, applies
// per-tenant rate limits and concurrency caps, and routes by path prefix to
// the product's service through that service's sidecar with a short-lived
// service token that carries the tenant.
//
// It keeps serving the tenants it knows when the control plane is down
// (stale-if-error, ten minutes by default), and never answers 404 for a
// tenant it cannot look up: that is a 503.
package edge

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/proxy"
	"github.com/plinth-platform/plinth/internal/ratelimit"
	"github.com/plinth-platform/plinth/internal/sidecar"
	"github.com/plinth-platform/plinth/internal/tenantctx"
)

// Headers the edge reads or sets.
const (
	// HeaderHop marks a request one edge forwarded to another region's edge;
	// a request that carries it is never forwarded again (no loops).
	HeaderHop = "Plinth-Edge-Hop"
	// HeaderContextAge is set on responses served from a stale tenant
	// context (the control plane unreachable): seconds since the edge last
	// heard from it.
	HeaderContextAge = "Plinth-Context-Age"
	headerRequestID  = "X-Request-Id"
	headerTrace      = "Traceparent"
)

// Defaults.
const (
	ServiceDefault           = "edge"
	BaseDomainDefault        = "plinth.localhost"
	TenantRateDefault        = 1000
	TenantConcurrencyDefault = 256
	HoldForDefault           = 2 * time.Second
	MaxHeldDefault           = 1000
	RefreshEveryDefault      = 30 * time.Second
)

// Config configures an edge.
type Config struct {
	// Region is the region this edge serves.
	Region string
	// BaseDomain: <slug>.<BaseDomain> names tenant <slug> (BaseDomainDefault).
	BaseDomain string
	// Listen is the address the edge serves on.
	Listen string
	// Advertise is the URL this edge is reached at (default from Listen).
	Advertise string
	// Admin, when set, serves /metrics, /healthz and /readyz.
	Admin string
	// ControlURL is the control plane's API; Credential is the edge
	// service's registration credential (plinth service create edge).
	ControlURL, Credential string
	// Service is the edge's service identity (ServiceDefault).
	Service string
	// Fetcher overrides where tenant contexts come from (tests).
	Fetcher tenantctx.Fetcher
	// StaleFor is how long known tenants are served while the control
	// plane is unreachable (tenantctx.StaleForDefault).
	StaleFor time.Duration
	// TenantRate is requests per second per tenant (TenantRateDefault;
	// negative: none); TenantConcurrency caps a tenant's requests in
	// flight (TenantConcurrencyDefault; negative: none).
	TenantRate, TenantConcurrency int
	// HoldFor bounds how long a request for a moving or restoring tenant is
	// held; MaxHeld bounds how many are held at once.
	HoldFor time.Duration
	MaxHeld int
	// RefreshEvery is how often routes and regions are reloaded besides
	// when the feed says they changed.
	RefreshEvery time.Duration
	// Redis, when set, shares the per-tenant rate limits between edges.
	Redis *redis.Client
	// AccessLog, when set, gets one JSON line per request.
	AccessLog *slog.Logger
	Logger    *slog.Logger
	Registry  *prometheus.Registry
}

// Edge is a running edge router.
type Edge struct {
	cfg      Config
	log      *slog.Logger
	cache    *tenantctx.Cache
	control  *api.Client
	sc       *sidecar.Sidecar
	limiter  ratelimit.Limiter
	routes   atomic.Pointer[[]catalog.Route]
	regions  atomic.Pointer[map[string]string] // region -> host:port of its edge
	inflight sync.Map                          // tenant ID -> *atomic.Int64
	held     atomic.Int64
	refresh  chan struct{}
	metrics  *metrics

	ctx      context.Context
	cancel   context.CancelFunc
	listener net.Listener
	srv      *proxy.Server
	adminSrv *http.Server
	adminL   net.Listener
	done     chan struct{}
	bg       sync.WaitGroup
}

// New returns an Edge; Start runs it.
func New(cfg Config) (*Edge, error) {
	if err := catalog.ValidateName("region", cfg.Region); err != nil {
		return nil, fmt.Errorf("edge: --region: %w", err)
	}
	cfg.BaseDomain = cmp.Or(cfg.BaseDomain, BaseDomainDefault)
	if _, err := catalog.NormalizeDomain(cfg.BaseDomain); err != nil && cfg.BaseDomain != "localhost" {
		return nil, fmt.Errorf("edge: the base domain %q is not a domain name", cfg.BaseDomain)
	}
	if cfg.ControlURL == "" || cfg.Credential == "" {
		return nil, errors.New("edge: the control plane's URL and the edge's registration credential are required")
	}
	cfg.Service = cmp.Or(cfg.Service, ServiceDefault)
	cfg.Listen = cmp.Or(cfg.Listen, "127.0.0.1:8080")
	cfg.TenantRate = cmp.Or(cfg.TenantRate, TenantRateDefault)
	cfg.TenantConcurrency = cmp.Or(cfg.TenantConcurrency, TenantConcurrencyDefault)
	cfg.HoldFor = cmp.Or(cfg.HoldFor, HoldForDefault)
	cfg.MaxHeld = cmp.Or(cfg.MaxHeld, MaxHeldDefault)
	cfg.RefreshEvery = cmp.Or(cfg.RefreshEvery, RefreshEveryDefault)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	e := &Edge{cfg: cfg, log: cfg.Logger.With("role", "edge", "region", cfg.Region), refresh: make(chan struct{}, 1),
		control: api.NewClient(cfg.ControlURL, cfg.Credential), done: make(chan struct{})}
	e.routes.Store(&[]catalog.Route{})
	e.regions.Store(&map[string]string{})
	e.limiter = ratelimit.NewLocal(0)
	if cfg.Redis != nil {
		e.limiter = ratelimit.NewShared(cfg.Redis, "plinth:rl:edge:", ratelimit.FallbackLocal)
	}
	fetcher := cfg.Fetcher
	if fetcher == nil {
		fetcher = tenantctx.NewClient(cfg.ControlURL, cfg.Credential)
	}
	e.cache = tenantctx.NewCache(tenantctx.Config{Fetcher: fetcher, StaleFor: cfg.StaleFor, Logger: e.log,
		OnEvent: func(tenantctx.Event) { e.poke() }})
	e.metrics = newMetrics(cfg.Registry, e)
	return e, nil
}

// Cache is the edge's tenant-context cache.
func (e *Edge) Cache() *tenantctx.Cache { return e.cache }

// Start listens, registers the edge's signing key, warms the cache from
// the snapshot and follows the change feed. A control plane that cannot be
// reached at start is no error: the edge retries in the background.
func (e *Edge) Start(ctx context.Context) error {
	var err error
	if e.listener, err = net.Listen("tcp", e.cfg.Listen); err != nil {
		return fmt.Errorf("edge cannot listen on %s: %w", e.cfg.Listen, err)
	}
	advertise := cmp.Or(e.cfg.Advertise, "http://"+e.listener.Addr().String())
	e.sc, err = sidecar.New(sidecar.Config{Service: e.cfg.Service, Credential: e.cfg.Credential, ControlURL: e.cfg.ControlURL,
		ClientOnly: true, Advertise: advertise, Logger: e.log})
	if err == nil {
		err = e.sc.StartClient(ctx)
	}
	if err != nil {
		e.listener.Close()
		return fmt.Errorf("edge: register with the control plane: %w", err)
	}
	e.ctx, e.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := e.cache.Warm(ctx); err != nil {
		e.log.Warn("could not warm the tenant-context cache; tenants load on first use", "error", err)
	}
	if err := e.reload(ctx); err != nil {
		e.log.Warn("could not load routes and regions; retrying", "error", err)
	}
	e.bg.Add(2)
	go func() { defer e.bg.Done(); e.cache.Run(e.ctx) }()
	go func() { defer e.bg.Done(); e.refresher() }()
	if e.cfg.Admin != "" {
		if err := e.startAdmin(); err != nil {
			e.cancel()
			e.bg.Wait()
			e.listener.Close()
			_ = e.sc.Stop(ctx)
			return err
		}
	}
	e.srv = &proxy.Server{Handler: e.handle, Logger: e.log}
	go func() {
		defer close(e.done)
		_ = e.srv.Serve(e.listener)
	}()
	e.log.Info("edge serving", "listen", e.Addr(), "base_domain", e.cfg.BaseDomain)
	return nil
}

// Region is the region the edge serves.
func (e *Edge) Region() string { return e.cfg.Region }

// Addr is the address the edge serves on.
func (e *Edge) Addr() string { return e.listener.Addr().String() }

// AdminAddr is the address of /metrics, when served.
func (e *Edge) AdminAddr() string {
	if e.adminL == nil {
		return ""
	}
	return e.adminL.Addr().String()
}

func (e *Edge) startAdmin() error {
	l, err := net.Listen("tcp", e.cfg.Admin)
	if err != nil {
		return fmt.Errorf("edge admin cannot listen on %s: %w", e.cfg.Admin, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if len(*e.routes.Load()) == 0 {
			http.Error(w, "no routes loaded yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	if os.Getenv("PLINTH_PPROF") == "1" { // opt-in profiling, on the admin listener (loopback by default)
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}
	e.adminL, e.adminSrv = l, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.adminSrv.Serve(l) }()
	return nil
}

// Stop drains: new connections are refused, requests in flight finish
// within ctx; then the edge deregisters.
func (e *Edge) Stop(ctx context.Context) error {
	err := e.srv.Shutdown(ctx)
	<-e.done
	if e.adminSrv != nil {
		_ = e.adminSrv.Shutdown(ctx)
	}
	e.cancel()
	e.bg.Wait()
	return errors.Join(err, e.sc.Stop(ctx))
}

func (e *Edge) poke() {
	select {
	case e.refresh <- struct{}{}:
	default:
	}
}

// refresher reloads routes and regions when the feed says they changed,
// and every RefreshEvery.
func (e *Edge) refresher() {
	t := time.NewTicker(e.cfg.RefreshEvery)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		case <-e.refresh:
		}
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		if err := e.reload(ctx); err != nil {
			e.log.Warn("reload routes and regions (keeping the last ones)", "error", err)
		}
		cancel()
	}
}

func (e *Edge) reload(ctx context.Context) error {
	routes, err := e.control.Routes(ctx)
	if err != nil {
		return err
	}
	regions, err := e.control.ListRegions(ctx)
	if err != nil {
		return err
	}
	m := map[string]string{}
	for _, r := range regions {
		if u, err := url.Parse(r.EdgeURL); err == nil && u.Scheme == "http" && u.Host != "" {
			m[r.Name] = u.Host
		}
	}
	e.routes.Store(&routes)
	e.regions.Store(&m)
	return nil
}

// route finds the service for a request target: the longest matching
// prefix (the table is sorted longest first).
func (e *Edge) route(target string) (catalog.Route, bool) {
	for _, r := range *e.routes.Load() {
		if matchPrefix(target, r.Prefix) {
			return r, true
		}
	}
	return catalog.Route{}, false
}

// reply is a refusal the edge makes itself, counted and logged.
func (e *Edge) reply(req *proxy.Request, start time.Time, tc *tenantctx.Context, status int, code, detail string, h ...[2]string) proxy.Route {
	e.metrics.refused(code)
	e.finish(req, start, tc, "", status)
	return proxy.Route{Reply: proxy.Problem(status, code, detail, h...)}
}

var retryAfter = [2]string{"Retry-After", "5"}

// handle decides what happens to one request.
func (e *Edge) handle(req *proxy.Request) proxy.Route {
	start := time.Now()
	target, err := ParseHost(req.Host, e.cfg.BaseDomain)
	if err != nil {
		return e.reply(req, start, nil, 400, "bad_host", "the Host header must be <tenant>."+e.cfg.BaseDomain+" or a tenant's custom domain")
	}
	if !cleanPath(req.Target) {
		return e.reply(req, start, nil, 400, "bad_path", "the path must not contain dot segments, backslashes or encoded slashes")
	}
	hop := req.Header.Get(HeaderHop)
	var tc *tenantctx.Context
	var st tenantctx.Status
	if target.Slug != "" {
		tc, st, err = e.cache.Lookup(e.ctx, target.Slug)
	} else {
		tc, st, err = e.cache.LookupDomain(e.ctx, target.Domain)
	}
	switch {
	case errors.Is(err, tenantctx.ErrNotFound):
		return e.reply(req, start, nil, 404, "tenant_not_found", "no tenant is served here")
	case err != nil:
		return e.reply(req, start, nil, 503, "tenant_context_unavailable", "the tenant cannot be looked up right now", retryAfter)
	}
	if tc.State == catalog.StateMoving || tc.State == catalog.StateRestoring {
		if tc, st = e.hold(target, st); tc == nil {
			return e.reply(req, start, nil, 503, "tenant_unavailable", "the tenant is being moved or restored; retry shortly", retryAfter)
		}
	}
	switch tc.State {
	case catalog.StateActive:
	case catalog.StateProvisioning:
		return e.reply(req, start, tc, 503, "tenant_provisioning", "the tenant is being set up", retryAfter)
	case catalog.StateFailed:
		return e.reply(req, start, tc, 503, "tenant_failed", "the tenant's setup has not finished", retryAfter)
	case catalog.StateSuspended:
		return e.reply(req, start, tc, 403, "tenant_suspended", "the tenant is suspended")
	case catalog.StateDeactivated:
		return e.reply(req, start, tc, 403, "tenant_deactivated", "the tenant is deactivated")
	case catalog.StateDeleted:
		return e.reply(req, start, tc, 410, "tenant_deleted", "the tenant was deleted")
	case catalog.StateMoving, catalog.StateRestoring:
		return e.reply(req, start, tc, 503, "tenant_unavailable", "the tenant is being moved or restored; retry shortly", retryAfter)
	default: // purged, or a state this edge does not know
		return e.reply(req, start, nil, 404, "tenant_not_found", "no tenant is served here")
	}
	if tc.Region != e.cfg.Region {
		return e.forwardRegion(req, start, tc, hop)
	}
	rt, ok := e.route(req.Target)
	if !ok {
		return e.reply(req, start, tc, 404, "no_route", "no service serves this path")
	}
	if e.cfg.TenantRate > 0 {
		if d := e.limiter.Allow(e.ctx, tc.ID(), e.cfg.TenantRate); !d.Allowed {
			return e.reply(req, start, tc, 429, "rate_limited", "the tenant is over its rate limit", ratelimit.Headers("tenant", d)...)
		}
	}
	var inflight *atomic.Int64
	if e.cfg.TenantConcurrency > 0 {
		v, ok := e.inflight.Load(tc.TenantID)
		if !ok {
			v, _ = e.inflight.LoadOrStore(tc.TenantID, new(atomic.Int64))
		}
		inflight = v.(*atomic.Int64)
		if inflight.Add(1) > int64(e.cfg.TenantConcurrency) {
			inflight.Add(-1)
			return e.reply(req, start, tc, 429, "concurrency_limited", "the tenant has too many requests in flight",
				[2]string{"Retry-After", "1"})
		}
	}
	setRequestIDs(req)
	req.Header.Set("X-Forwarded-Host", req.Host)
	req.Header.Set("X-Forwarded-Proto", "http")
	fr := e.sc.Forward(req, rt.Service, auth.Tenant{ID: tc.ID(), Slug: tc.Slug, Region: tc.Region})
	if fr.Reply != nil {
		if inflight != nil {
			inflight.Add(-1)
		}
		e.finish(req, start, tc, rt.Prefix, fr.Reply.Status)
		return fr
	}
	prefix := rt.Prefix
	fr.Done = func(status int) {
		if inflight != nil {
			inflight.Add(-1)
		}
		e.finish(req, start, tc, prefix, status)
	}
	if st.Stale {
		age := strconv.Itoa(int(st.Age.Seconds()))
		prev := fr.OnResponse
		fr.OnResponse = func(r *proxy.Response) {
			if prev != nil {
				prev(r)
			}
			r.Header.Set(HeaderContextAge, age)
		}
	}
	return fr
}

// hold waits, bounded in time and in how many wait at once, for a moving
// or restoring tenant to settle; nil when it does not.
func (e *Edge) hold(t Target, st tenantctx.Status) (*tenantctx.Context, tenantctx.Status) {
	if e.held.Add(1) > int64(e.cfg.MaxHeld) {
		e.held.Add(-1)
		return nil, st
	}
	defer e.held.Add(-1)
	e.metrics.held.Inc()
	deadline := time.Now().Add(e.cfg.HoldFor)
	for time.Now().Before(deadline) {
		select {
		case <-e.ctx.Done():
			return nil, st
		case <-time.After(20 * time.Millisecond):
		}
		var tc *tenantctx.Context
		var err error
		if t.Slug != "" {
			tc, st, err = e.cache.Lookup(e.ctx, t.Slug)
		} else {
			tc, st, err = e.cache.LookupDomain(e.ctx, t.Domain)
		}
		if err != nil {
			return nil, st
		}
		if tc.State != catalog.StateMoving && tc.State != catalog.StateRestoring {
			return tc, st
		}
	}
	return nil, st
}

// forwardRegion sends a tenant homed elsewhere to its region's edge, once.
func (e *Edge) forwardRegion(req *proxy.Request, start time.Time, tc *tenantctx.Context, hop string) proxy.Route {
	if hop != "" {
		return e.reply(req, start, tc, 508, "region_loop", "the tenant's home region sent the request back")
	}
	addr, ok := (*e.regions.Load())[tc.Region]
	if !ok {
		return e.reply(req, start, tc, 503, "region_unreachable", "the tenant's home region has no edge known here", retryAfter)
	}
	req.Header.DelPrefix("Plinth-")
	req.Header.Set(HeaderHop, e.cfg.Region)
	setRequestIDs(req)
	return proxy.Route{Upstream: addr, TryTimeout: 30 * time.Second,
		Done: func(status int) { e.finish(req, start, tc, "region:"+tc.Region, status) }}
}

// validRequestID accepts 1–128 of [A-Za-z0-9._-] (checked by hand: this
// runs on every request).
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// setRequestIDs keeps a well-formed X-Request-Id and traceparent from the
// client, and makes new ones otherwise.
func setRequestIDs(req *proxy.Request) {
	if id := req.Header.Get(headerRequestID); !validRequestID(id) {
		req.Header.Set(headerRequestID, randomHex(12))
	}
	if !validTraceparent(req.Header.Get(headerTrace)) {
		req.Header.Set(headerTrace, newTraceparent())
	}
}

// validTraceparent checks the W3C form 00-<32 hex>-<16 hex>-<2 hex>.
func validTraceparent(s string) bool {
	if len(s) != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if i == 2 || i == 35 || i == 52 {
			continue
		}
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s[:2] != "ff" && s[3:35] != "00000000000000000000000000000000" && s[36:52] != "0000000000000000"
}

// newTraceparent is a W3C traceparent with a random trace and span ID,
// sampled, made in one buffer.
func newTraceparent() string {
	var raw [24]byte
	for i := 0; i < len(raw); i += 8 {
		binary.LittleEndian.PutUint64(raw[i:], rand.Uint64())
	}
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], raw[:16])
	b[35] = '-'
	hex.Encode(b[36:52], raw[16:24])
	copy(b[52:], "-01")
	return string(b[:])
}

// randomHex is n random bytes as hex: trace and request IDs, not secrets.
func randomHex(n int) string {
	b := make([]byte, 0, n)
	for i := 0; i < n; i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b = append(b, byte(v>>(8*j)))
		}
	}
	return hex.EncodeToString(b)
}

// finish counts a request and writes its access-log line.
func (e *Edge) finish(req *proxy.Request, start time.Time, tc *tenantctx.Context, route string, status int) {
	took := time.Since(start)
	tier := -1
	if tc != nil {
		tier = tc.Tier
	}
	e.metrics.observe(tier, route, status, took)
	if e.cfg.AccessLog == nil {
		return
	}
	attrs := []slog.Attr{slog.String("method", req.Method), slog.String("host", req.Host), slog.Int("status", status),
		slog.Float64("duration_ms", float64(took.Microseconds())/1000), slog.String("route", route),
		slog.String("request_id", req.Header.Get(headerRequestID)), slog.String("remote", req.RemoteAddr)}
	if tp := req.Header.Get(headerTrace); len(tp) == 55 {
		attrs = append(attrs, slog.String("trace_id", tp[3:35]))
	}
	if tc != nil {
		attrs = append(attrs, slog.String("tenant_id", tc.ID()), slog.Int("tier", tc.Tier))
	}
	e.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
}
