package edge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/domainproof"
	"github.com/plinth-platform/plinth/internal/edge"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/sidecar"
	"github.com/plinth-platform/plinth/internal/tenantctx"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const adminToken = "edge-test-admin-token-0123456"

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func migrateControl(ctx context.Context, pool *pgxpool.Pool) error {
	logger := slog.New(slog.DiscardHandler)
	if err := catalog.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	return provision.Migrate(ctx, pool, logger)
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// seen is what reached the product service: the tenant its sidecar told it.
type seen struct {
	mu      sync.Mutex
	tenants []string
}

func (s *seen) add(id string) {
	s.mu.Lock()
	s.tenants = append(s.tenants, id)
	s.mu.Unlock()
}

func (s *seen) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tenants...)
}

type bundle struct {
	ctx      context.Context
	dsn      string
	srv      *server.Server
	control  string
	admin    *api.Client
	edgeCred string
	tenants  map[string]uuid.UUID
	seen     *seen
	stop     func()
	// web is the tenants' own web server the HTTP domain proof reaches;
	// published maps a domain to the token it serves.
	web       *httptest.Server
	mu        sync.Mutex
	published map[string]string
}

// setup starts a control plane (regions r1 and r2, a shard in each, the
// product "app"), the service app behind its sidecar (routed at /app),
// the edge service, and active tenants acme and globex in r1 and oslo in r2.
func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := testkit.Context(t, 3*time.Minute)
	shard := testkit.SharedCluster(t)
	_, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	b := &bundle{ctx: ctx, dsn: dsn, tenants: map[string]uuid.UUID{}, seen: &seen{}, published: map[string]string{}}
	b.web = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		token, ok := b.published[r.Host]
		b.mu.Unlock()
		if !ok || r.URL.Path != domainproof.ChallengePath+token {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, token)
	}))
	t.Cleanup(b.web.Close)
	b.start(t, "127.0.0.1:0")
	b.admin = api.NewClient(b.control, adminToken)
	for _, r := range []string{"r1", "r2"} {
		must(t, b.admin.Do(ctx, "POST", "/v1/regions", api.CreateRegionRequest{Name: r}, nil))
	}
	must(t, b.admin.Do(ctx, "POST", "/v1/shards", api.CreateShardRequest{Name: "s1", Region: "r1", DSN: shard.DSN("postgres")}, nil))
	must(t, b.admin.Do(ctx, "POST", "/v1/shards", api.CreateShardRequest{Name: "s2", Region: "r2", DSN: shard.DSN("template1")}, nil))
	must(t, b.admin.Do(ctx, "POST", "/v1/products", api.RegisterProductRequest{Name: "app", Default: true, Migrations: []catalog.Migration{
		{Version: 1, Name: "items", SQL: "-- +goose Up\nCREATE TABLE items (id bigserial PRIMARY KEY);"},
	}}, nil))
	creds := map[string]string{}
	for name, req := range map[string]api.ServiceRequest{
		"app":  {AllowedCallers: []string{"edge"}, Routes: []string{"/app"}, Product: "app"},
		"edge": {AllowedCallers: []string{}},
	} {
		req.Name = name
		var out api.ServiceCreated
		must(t, b.admin.Do(ctx, "POST", "/v1/services", req, &out))
		creds[name] = out.Credential
	}
	b.edgeCred = creds["edge"]
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(sidecar.HeaderTenantID)
		b.seen.add(id)
		if r.URL.Path == "/app/stream" {
			for i := range 3 {
				fmt.Fprintf(w, "chunk %d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
			return
		}
		fmt.Fprintf(w, "tenant=%s slug=%s caller=%s path=%s trace=%s", id, r.Header.Get(sidecar.HeaderTenantSlug),
			r.Header.Get(sidecar.HeaderCaller), r.URL.Path, r.Header.Get("Traceparent"))
	}))
	t.Cleanup(upstream.Close)
	sc, err := sidecar.New(sidecar.Config{Service: "app", Credential: creds["app"], ControlURL: b.control,
		Upstream: upstream.URL, HeartbeatInterval: 200 * time.Millisecond, Logger: quiet()})
	must(t, err)
	must(t, sc.Start(ctx))
	t.Cleanup(func() { _ = sc.Stop(context.Background()) })
	for slug, region := range map[string]string{"acme": "r1", "globex": "r1", "oslo": "r2"} {
		resp, err := b.admin.CreateTenant(ctx, api.CreateTenantRequest{Slug: slug, Region: region})
		must(t, err)
		op, err := b.admin.WaitOperation(ctx, resp.Operation.ID.String(), nil)
		must(t, err)
		if op.State != catalog.OperationSucceeded {
			t.Fatalf("provision %s: %+v", slug, op)
		}
		b.tenants[slug] = resp.Tenant.ID
	}
	return b
}

// start runs the control plane on addr.
func (b *bundle) start(t *testing.T, addr string) {
	t.Helper()
	srv, err := server.Start(b.ctx, server.Config{DatabaseURL: b.dsn, Roles: []server.Role{server.RoleControl, server.RoleWorker},
		Listen: addr, AdminToken: adminToken, Logger: quiet(),
		// Every domain resolves to the tenants' web server.
		Domains: &domainproof.Prover{Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, b.web.Listener.Addr().String())
		}}})
	must(t, err)
	b.srv, b.control = srv, "http://"+srv.Addr()
	var once sync.Once
	b.stop = func() { once.Do(func() { _ = srv.Stop(context.Background()) }) }
	t.Cleanup(b.stop)
}

func (b *bundle) edge(t *testing.T, region string, mod ...func(*edge.Config)) *edge.Edge {
	t.Helper()
	cfg := edge.Config{Region: region, Listen: "127.0.0.1:0", ControlURL: b.control, Credential: b.edgeCred,
		RefreshEvery: 200 * time.Millisecond, Logger: quiet()}
	for _, m := range mod {
		m(&cfg)
	}
	e, err := edge.New(cfg)
	must(t, err)
	must(t, e.Start(b.ctx))
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
	probe := map[string]string{"r1": "acme", "r2": "oslo"}[region]
	testkit.Eventually(t, 30*time.Second, "the edge to load its routes", func() (bool, error) {
		code, _, _ := get(b.ctx, e, probe+".plinth.localhost", "/app", nil)
		return code == 200, nil
	})
	return e
}

func get(ctx context.Context, e *edge.Edge, host, path string, header map[string]string) (int, string, http.Header) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+e.Addr()+path, nil)
	req.Host = host
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// raw sends a request exactly as written, for what net/http will not send.
func raw(t *testing.T, e *edge.Edge, request string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", e.Addr())
	must(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, request)
	must(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestEdgeRoutesWithTheTenantsContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1")
	acme := b.tenants["acme"].String()
	code, body, _ := get(b.ctx, e, "acme.plinth.localhost", "/app/items?x=1", map[string]string{
		"Plinth-Tenant-Id": b.tenants["globex"].String(), "Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	want := "tenant=" + acme + " slug=acme caller=edge path=/app/items trace=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if code != 200 || body != want {
		t.Fatalf("got %d %q\nwant 200 %q", code, body, want)
	}
	// A streamed body arrives as it is written, not at the end.
	req, _ := http.NewRequestWithContext(b.ctx, "GET", "http://"+e.Addr()+"/app/stream", nil)
	req.Host = "acme.plinth.localhost"
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if err != nil || line != "chunk 0\n" {
		t.Fatalf("stream: %q %v", line, err)
	}
	if code, body, _ := get(b.ctx, e, "acme.plinth.localhost", "/nowhere", nil); code != 404 || !strings.Contains(body, "no_route") {
		t.Fatalf("unrouted path: %d %s", code, body)
	}
}

// No Host trick reaches the service with another tenant's context: every
// request either is refused or reaches app as acme, the tenant it names.
func TestEdgeCrossTenantTricks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1")
	acme, globex := b.tenants["acme"].String(), b.tenants["globex"].String()
	tests := []struct {
		name, request string
		want          int
	}{
		{"base domain as a prefix of another", "GET /app HTTP/1.1\r\nHost: acme.plinth.localhost.evil.test\r\n\r\n", 404},
		{"upper case and trailing dot", "GET /app HTTP/1.1\r\nHost: ACME.plinth.localhost.\r\n\r\n", 200},
		{"two Host headers", "GET /app HTTP/1.1\r\nHost: acme.plinth.localhost\r\nHost: globex.plinth.localhost\r\n\r\n", 400},
		{"absolute-form target", "GET http://globex.plinth.localhost/app HTTP/1.1\r\nHost: acme.plinth.localhost\r\n\r\n", 400},
		{"IDN look-alike", "GET /app HTTP/1.1\r\nHost: \xd0\xb0cme.plinth.localhost\r\n\r\n", 400},
		{"punycode look-alike", "GET /app HTTP/1.1\r\nHost: xn--cme-8cd.plinth.localhost\r\n\r\n", 400},
		{"nested label", "GET /app HTTP/1.1\r\nHost: globex.acme.plinth.localhost\r\n\r\n", 400},
		{"dot segments", "GET /app/../globex HTTP/1.1\r\nHost: acme.plinth.localhost\r\n\r\n", 400},
		{"encoded dot segments", "GET /app/%2e%2e/x HTTP/1.1\r\nHost: acme.plinth.localhost\r\n\r\n", 400},
		{"spoofed tenant header", "GET /app HTTP/1.1\r\nHost: acme.plinth.localhost\r\nPlinth-Tenant-Id: " + globex +
			"\r\nPlinth-Tenant-Slug: globex\r\nPlinth-Caller: admin\r\n\r\n", 200},
		{"spoofed hop header", "GET /app HTTP/1.1\r\nHost: acme.plinth.localhost\r\nPlinth-Edge-Hop: r2\r\n\r\n", 200},
		{"bad port", "GET /app HTTP/1.1\r\nHost: acme.plinth.localhost:99x\r\n\r\n", 400},
		{"IP literal", "GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400},
		{"unknown tenant", "GET /app HTTP/1.1\r\nHost: nobody.plinth.localhost\r\n\r\n", 404},
		{"no Host", "GET /app HTTP/1.1\r\n\r\n", 400},
	}
	for _, tt := range tests {
		before := len(b.seen.all())
		code, body := raw(t, e, tt.request)
		if code != tt.want {
			t.Errorf("%s: got %d %s, want %d", tt.name, code, body, tt.want)
		}
		for _, id := range b.seen.all()[before:] {
			if id != acme {
				t.Errorf("%s: the service saw tenant %q", tt.name, id)
			}
		}
		if code == 200 && !strings.Contains(body, "tenant="+acme+" slug=acme caller=edge") {
			t.Errorf("%s: served with the wrong context: %s", tt.name, body)
		}
	}
}

func TestEdgeTenantStates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fixed := map[string]catalog.TenantState{"prov": catalog.StateProvisioning, "fail": catalog.StateFailed,
		"move": catalog.StateMoving, "rest": catalog.StateRestoring}
	e := b.edge(t, "r1", func(c *edge.Config) {
		c.Fetcher = &fixedStates{Fetcher: tenantctx.NewClient(b.control, b.edgeCred), states: fixed}
		c.HoldFor = 100 * time.Millisecond
	})
	for _, slug := range []string{"acme", "globex"} {
		if code, _, _ := get(b.ctx, e, slug+".plinth.localhost", "/app", nil); code != 200 {
			t.Fatalf("%s: %d", slug, code)
		}
	}
	tests := []struct {
		slug    string
		actions []catalog.Action
		status  int
		code    string
	}{
		{"acme", []catalog.Action{catalog.ActionSuspend}, 403, "tenant_suspended"},
		{"globex", []catalog.Action{catalog.ActionDeactivate}, 403, "tenant_deactivated"},
		{"oslo", []catalog.Action{catalog.ActionDelete}, 410, "tenant_deleted"},
	}
	for _, tt := range tests {
		for _, a := range tt.actions {
			resp, err := b.admin.TenantAction(b.ctx, tt.slug, a, "test")
			must(t, err)
			if resp.Operation != nil {
				_, err = b.admin.WaitOperation(b.ctx, resp.Operation.ID.String(), nil)
				must(t, err)
			}
		}
		testkit.Eventually(t, 30*time.Second, tt.slug+" to be refused with "+tt.code, func() (bool, error) {
			code, body, _ := get(b.ctx, e, tt.slug+".plinth.localhost", "/app", nil)
			return code == tt.status && strings.Contains(body, tt.code), fmt.Errorf("%d %s", code, body)
		})
	}
	for slug, want := range map[string]int{"prov": 503, "fail": 503, "move": 503, "rest": 503} {
		code, body, h := get(b.ctx, e, slug+".plinth.localhost", "/app", nil)
		if code != want || (code == 503 && h.Get("Retry-After") == "") {
			t.Errorf("%s: %d %s (Retry-After %q)", slug, code, body, h.Get("Retry-After"))
		}
	}
	// oslo lives in r2: this edge refuses rather than loops.
}

// fixedStates answers some slugs with synthetic contexts in a given state
// (states no API call leaves a tenant in for long), and the rest from the
// control plane.
type fixedStates struct {
	tenantctx.Fetcher
	states map[string]catalog.TenantState
}

// Snapshot adds the synthetic tenants to the directory.
func (f *fixedStates) Snapshot(ctx context.Context, after uuid.UUID, limit int) (tenantctx.Page, error) {
	p, err := f.Fetcher.Snapshot(ctx, after, limit)
	if err == nil && p.NextCursor == "" {
		for slug := range f.states {
			tc, _ := f.BySlug(ctx, slug)
			p.Items = append(p.Items, tc)
		}
	}
	return p, err
}

func (f *fixedStates) BySlug(ctx context.Context, slug string) (tenantctx.Context, error) {
	if st, ok := f.states[slug]; ok {
		return tenantctx.Context{TenantID: uuid.NewSHA1(uuid.Nil, []byte(slug)), Slug: slug, State: st, Region: "r1"}, nil
	}
	return f.Fetcher.BySlug(ctx, slug)
}

func TestEdgeForwardsToTheHomeRegion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r2 := b.edge(t, "r2")
	must(t, catalog.New(b.srv.Pool()).SetRegionEdgeURL(b.ctx, "r2", "http://"+r2.Addr()))
	r1 := b.edge(t, "r1")
	oslo := b.tenants["oslo"].String()
	testkit.Eventually(t, 30*time.Second, "r1 to forward oslo to r2", func() (bool, error) {
		code, body, _ := get(b.ctx, r1, "oslo.plinth.localhost", "/app", nil)
		return code == 200 && strings.Contains(body, "tenant="+oslo), fmt.Errorf("%d %s", code, body)
	})
	// A request that already crossed once is not sent on again.
	if code, body, _ := get(b.ctx, r2, "acme.plinth.localhost", "/app", map[string]string{edge.HeaderHop: "r1"}); code != 508 {
		t.Fatalf("a forwarded request for another region: %d %s", code, body)
	}
}

func TestEdgeLimitsPerTenant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1", func(c *edge.Config) { c.TenantRate = 3 })
	limited := 0
	for range 30 {
		code, _, h := get(b.ctx, e, "acme.plinth.localhost", "/app", nil)
		if code == 429 {
			limited++
			if h.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		}
	}
	if limited == 0 {
		t.Fatal("30 requests at a limit of 3 per second were all served")
	}
	// globex has its own budget.
	if code, _, _ := get(b.ctx, e, "globex.plinth.localhost", "/app", nil); code != 200 {
		t.Fatalf("globex after acme was limited: %d", code)
	}
}

// The control plane dies: the edge keeps serving the tenants it knows,
// marked stale, until the window ends (then 503, never 404); a control
// plane back on the same address is followed again without a restart, and
// no change made meanwhile is missed.
func TestEdgeSurvivesTheControlPlane(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1", func(c *edge.Config) { c.StaleFor = 8 * time.Second })
	addr := b.srv.Addr()
	if code, _, _ := get(b.ctx, e, "globex.plinth.localhost", "/app", nil); code != 200 {
		t.Fatalf("globex: %d", code)
	}
	b.stop()
	code, body, h := get(b.ctx, e, "acme.plinth.localhost", "/app", nil)
	if code != 200 {
		t.Fatalf("acme with the control plane down: %d %s", code, body)
	}
	testkit.Eventually(t, 30*time.Second, "the edge to mark answers stale", func() (bool, error) {
		code, body, h = get(b.ctx, e, "acme.plinth.localhost", "/app", nil)
		return code == 200 && h.Get(edge.HeaderContextAge) != "", fmt.Errorf("%d, age %q %s", code, h.Get(edge.HeaderContextAge), body)
	})
	testkit.Eventually(t, 30*time.Second, "a 503 once the window ends", func() (bool, error) {
		code, body, _ := get(b.ctx, e, "acme.plinth.localhost", "/app", nil)
		if code == 404 {
			t.Fatalf("a false 404 during the outage: %s", body)
		}
		return code == 503, fmt.Errorf("%d %s", code, body)
	})
	// Meanwhile globex is suspended behind the edge's back.
	pool := testkit.Pool(t, b.dsn)
	_, err := catalog.New(pool).Transition(b.ctx, catalog.TransitionParams{TenantID: b.tenants["globex"], Action: "suspend",
		From: []catalog.TenantState{catalog.StateActive}, To: catalog.StateSuspended, Actor: "test", Reason: "outage"})
	must(t, err)
	b.start(t, addr)
	testkit.Eventually(t, 30*time.Second, "acme served again", func() (bool, error) {
		code, body, h := get(b.ctx, e, "acme.plinth.localhost", "/app", nil)
		return code == 200 && h.Get(edge.HeaderContextAge) == "", fmt.Errorf("%d %s", code, body)
	})
	testkit.Eventually(t, 30*time.Second, "the suspension made during the outage", func() (bool, error) {
		code, body, _ := get(b.ctx, e, "globex.plinth.localhost", "/app", nil)
		return code == 403, fmt.Errorf("%d %s", code, body)
	})
}

// An edge that was away while the change log was pruned past its version
// cannot replay what it missed: the feed tells it to reload, and it does.
func TestEdgeReloadsAfterThePrunedChangesItMissed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1")
	addr := b.srv.Addr()
	if code, _, _ := get(b.ctx, e, "globex.plinth.localhost", "/app", nil); code != 200 {
		t.Fatalf("globex: %d", code)
	}
	before := e.Cache().Version()
	b.stop()
	store := catalog.New(testkit.Pool(t, b.dsn))
	_, err := store.Transition(b.ctx, catalog.TransitionParams{TenantID: b.tenants["globex"], Action: "suspend",
		From: []catalog.TenantState{catalog.StateActive}, To: catalog.StateSuspended, Actor: "test", Reason: "while the edge was away"})
	must(t, err)
	n, err := store.PruneChanges(b.ctx, 0)
	must(t, err)
	if pruned, err := store.PrunedThrough(b.ctx); err != nil || pruned <= before || n == 0 {
		t.Fatalf("pruned %d rows through %d (edge at %d): %v", n, pruned, before, err)
	}
	b.start(t, addr)
	testkit.Eventually(t, 30*time.Second, "the suspension whose change-log row is gone", func() (bool, error) {
		code, body, _ := get(b.ctx, e, "globex.plinth.localhost", "/app", nil)
		return code == 403, fmt.Errorf("%d %s", code, body)
	})
	if got := e.Cache().Stats.Reloads.Load(); got != 1 {
		t.Fatalf("Stats.Reloads = %d, want 1", got)
	}
	if code, body, _ := get(b.ctx, e, "acme.plinth.localhost", "/app", nil); code != 200 {
		t.Fatalf("acme after the reload: %d %s", code, body)
	}
}

// A custom domain serves its tenant only once the tenant proved control of
// it, and never a tenant that did not prove it first.
func TestEdgeCustomDomains(t *testing.T) {
	t.Parallel()
	b := setup(t)
	e := b.edge(t, "r1")
	acme := b.tenants["acme"].String()
	status := func(err error) int {
		var p *api.Problem
		if errors.As(err, &p) {
			return p.Status
		}
		if err != nil {
			t.Fatal(err)
		}
		return 200
	}
	for _, bad := range []string{"", "localhost", "exa mple.com", "xn--.com", "\u0430cme.example", strings.Repeat("a", 70) + ".com", "10.0.0.1"} {
		if _, err := b.admin.AddDomain(b.ctx, "acme", bad); status(err) != 422 {
			t.Errorf("claim %q: %v", bad, err)
		}
	}
	d, err := b.admin.AddDomain(b.ctx, "acme", "WWW.Acme.Example.")
	must(t, err)
	if d.Domain != "www.acme.example" || d.VerifiedAt != nil || !strings.HasPrefix(d.Token, "plinth-verify=") {
		t.Fatalf("claim: %+v", d)
	}
	if code, body, _ := get(b.ctx, e, "www.acme.example", "/app", nil); code != 404 {
		t.Fatalf("an unproven domain is served: %d %s", code, body)
	}
	// globex claims the same domain and publishes its own token first…
	g, err := b.admin.AddDomain(b.ctx, "globex", "www.acme.example")
	must(t, err)
	if _, err := b.admin.VerifyDomain(b.ctx, "acme", "www.acme.example"); status(err) != 422 {
		t.Fatalf("verify with nothing published: %v", err)
	}
	b.mu.Lock()
	b.published["www.acme.example"] = d.Token
	b.mu.Unlock()
	// …but the domain serves acme's token, so only acme proves it.
	if _, err := b.admin.VerifyDomain(b.ctx, "globex", "www.acme.example"); status(err) != 422 {
		t.Fatalf("globex proved a domain that serves acme's token: %v", err)
	}
	if v, err := b.admin.VerifyDomain(b.ctx, "acme", "www.acme.example"); err != nil || v.VerifiedAt == nil {
		t.Fatalf("acme's proof: %+v %v", v, err)
	}
	testkit.Eventually(t, 30*time.Second, "the edge to serve acme on its domain", func() (bool, error) {
		code, body, _ := get(b.ctx, e, "www.acme.example:80", "/app", nil)
		return code == 200 && strings.Contains(body, "tenant="+acme), fmt.Errorf("%d %s", code, body)
	})
	// Now globex's token goes up: the domain is taken.
	b.mu.Lock()
	b.published["www.acme.example"] = g.Token
	b.mu.Unlock()
	if _, err := b.admin.VerifyDomain(b.ctx, "globex", "www.acme.example"); status(err) != 409 {
		t.Fatalf("globex took acme's proven domain: %v", err)
	}
	if _, err := b.admin.AddDomain(b.ctx, "oslo", "www.acme.example"); status(err) != 409 {
		t.Fatalf("claiming a proven domain: %v", err)
	}
	must(t, b.admin.RemoveDomain(b.ctx, "acme", "www.acme.example"))
	testkit.Eventually(t, 30*time.Second, "the edge to stop serving the removed domain", func() (bool, error) {
		code, body, _ := get(b.ctx, e, "www.acme.example", "/app", nil)
		return code == 404, fmt.Errorf("%d %s", code, body)
	})
}
