package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/tenantctx"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// contexts stands for the control plane's tenant-context API: what the
// test puts in it, and a feed the test drives.
type contexts struct {
	mu     sync.Mutex
	byID   map[uuid.UUID]tenantctx.Context
	events chan tenantctx.Event
}

func (c *contexts) set(tc tenantctx.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byID[tc.TenantID] = tc
}

func (c *contexts) ByID(_ context.Context, id uuid.UUID) (tenantctx.Context, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tc, ok := c.byID[id]
	if !ok {
		return tenantctx.Context{}, tenantctx.ErrNotFound
	}
	return tc, nil
}

func (c *contexts) BySlug(context.Context, string) (tenantctx.Context, error) {
	return tenantctx.Context{}, tenantctx.ErrNotFound
}

func (c *contexts) ByDomain(context.Context, string) (tenantctx.Context, error) {
	return tenantctx.Context{}, tenantctx.ErrNotFound
}

func (c *contexts) Snapshot(context.Context, uuid.UUID, int) (tenantctx.Page, error) {
	return tenantctx.Page{}, nil
}

func (c *contexts) Follow(ctx context.Context, after int64, fn func(tenantctx.Event) error) error {
	if err := fn(tenantctx.Event{Type: "sync", Version: after}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-c.events:
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}

type rig struct {
	app     *App
	srv     *httptest.Server
	ctxs    *contexts
	tenants map[string]tenantctx.Context
	cluster *localpg.Cluster
}

// newRig makes tenant databases on the shared cluster for acme, globex
// and a suspended tenant, and serves a tiny notes service built on the SDK.
func newRig(t *testing.T) *rig {
	t.Helper()
	c := testkit.SharedCluster(t)
	r := &rig{ctxs: &contexts{byID: map[uuid.UUID]tenantctx.Context{}, events: make(chan tenantctx.Event, 16)},
		tenants: map[string]tenantctx.Context{}, cluster: c}
	for i, slug := range []string{"acme", "globex", "frozen", "other-product"} {
		db := testkit.CreateDatabase(t, c, "")
		conn, err := pgx.Connect(context.Background(), c.DSN(db))
		must(t, err)
		_, err = conn.Exec(context.Background(), "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
		must(t, err)
		conn.Close(context.Background())
		product := "notes"
		if slug == "other-product" {
			product = "wiki"
		}
		state := catalog.StateActive
		if slug == "frozen" {
			state = catalog.StateSuspended
		}
		tc := tenantctx.Context{TenantID: uuid.New(), Slug: slug, State: state, Tier: i % 4, Region: "r1", Version: 1,
			Placements: []tenantctx.Placement{{Product: product, Shard: "s1", Address: "127.0.0.1:" + strconv.Itoa(c.Port), Database: db}}}
		r.ctxs.set(tc)
		r.tenants[slug] = tc
	}
	app, err := New(Config{Service: "notes", Product: "notes", contexts: r.ctxs, DBUser: localpg.Superuser, DBPassword: c.Password,
		IdleTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	must(t, err)
	must(t, app.Start(context.Background()))
	t.Cleanup(app.Close)
	r.app = app
	mux := http.NewServeMux()
	mux.HandleFunc("GET /notes", func(w http.ResponseWriter, req *http.Request) {
		db, err := DB(req.Context())
		if err != nil {
			WriteError(w, req, err)
			return
		}
		rows, err := db.Query(req.Context(), "SELECT body FROM notes ORDER BY id")
		if err != nil {
			WriteError(w, req, err)
			return
		}
		bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			WriteError(w, req, err)
			return
		}
		_ = json.NewEncoder(w).Encode(bodies)
	})
	mux.HandleFunc("POST /notes", func(w http.ResponseWriter, req *http.Request) {
		db, err := DB(req.Context())
		if err != nil {
			WriteError(w, req, err)
			return
		}
		body, _ := io.ReadAll(req.Body)
		var id int64
		err = db.InTx(req.Context(), func(tx pgx.Tx) error {
			return tx.QueryRow(req.Context(), "INSERT INTO notes (body) VALUES ($1) RETURNING id", string(body)).Scan(&id)
		})
		if err != nil {
			WriteError(w, req, err)
			return
		}
		a, err := NewARI(req.Context(), "notes", "note", strconv.FormatInt(id, 10))
		if err != nil {
			WriteError(w, req, err)
			return
		}
		_, _ = io.WriteString(w, a.String())
	})
	mux.HandleFunc("GET /notes/by-ari/{ari...}", func(w http.ResponseWriter, req *http.Request) {
		a, err := ParseARI(req.Context(), "notes", req.PathValue("ari"))
		if err != nil {
			WriteError(w, req, err)
			return
		}
		db, err := DB(req.Context())
		if err != nil {
			WriteError(w, req, err)
			return
		}
		var body string
		if err := db.QueryRow(req.Context(), "SELECT body FROM notes WHERE id = $1", a.ID).Scan(&body); err != nil {
			WriteError(w, req, err)
			return
		}
		_, _ = io.WriteString(w, body)
	})
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, req *http.Request) {
		tn, ok := Tenant(req.Context())
		if !ok {
			WriteError(w, req, ErrNoTenant)
			return
		}
		_, _ = io.WriteString(w, tn.Slug)
	})
	r.srv = httptest.NewServer(app.Handler(mux))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *rig) do(t *testing.T, method, path, tenant, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+path, strings.NewReader(body))
	must(t, err)
	if tenant != "" {
		id := tenant
		if tc, ok := r.tenants[tenant]; ok {
			id = tc.TenantID.String()
		}
		req.Header.Set("Plinth-Tenant-Id", id)
	}
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestTenantsGetTheirOwnDatabase(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	code, acmeARI := r.do(t, "POST", "/notes", "acme", "acme's secret")
	if code != 200 || !strings.HasPrefix(acmeARI, "ari:cloud:notes:"+r.tenants["acme"].TenantID.String()+":note/") {
		t.Fatalf("acme's post: %d %s", code, acmeARI)
	}
	code, _ = r.do(t, "POST", "/notes", "globex", "globex's note")
	if code != 200 {
		t.Fatalf("globex's post: %d", code)
	}
	tests := []struct {
		name, method, path, tenant string
		status                     int
		want                       string // contained in the body
	}{
		{"acme lists its notes", "GET", "/notes", "acme", 200, `["acme's secret"]`},
		{"globex lists only its own", "GET", "/notes", "globex", 200, `["globex's note"]`},
		{"acme reads by its ARI", "GET", "/notes/by-ari/" + acmeARI, "acme", 200, "acme's secret"},
		{"globex cannot read acme's ARI", "GET", "/notes/by-ari/" + acmeARI, "globex", 404, "not_found"},
		{"globex's ARI for acme's ID finds globex's own row or nothing",
			"GET", "/notes/by-ari/" + strings.Replace(acmeARI, r.tenants["acme"].TenantID.String(), r.tenants["globex"].TenantID.String(), 1),
			"globex", 200, "globex's note"},
		{"a malformed ARI", "GET", "/notes/by-ari/ari:cloud:notes:x", "acme", 400, "invalid_ari"},
		{"no tenant: no database", "GET", "/notes", "", 400, "tenant_required"},
		{"no tenant: no identity", "GET", "/whoami", "", 400, "tenant_required"},
		{"a tenant ID that is not one", "GET", "/notes", "not-a-uuid", 404, "tenant_not_found"},
		{"an unknown tenant", "GET", "/notes", uuid.NewString(), 404, "tenant_not_found"},
		{"a suspended tenant", "GET", "/notes", "frozen", 403, "tenant_not_active"},
		{"a tenant without the product", "GET", "/notes", "other-product", 404, "product_not_installed"},
		{"the identity", "GET", "/whoami", "globex", 200, "globex"},
	}
	for _, tt := range tests {
		code, body := r.do(t, tt.method, tt.path, tt.tenant, "")
		if code != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %d %s, want %d with %q", tt.name, code, body, tt.status, tt.want)
		}
	}
	// Requests borrowed connections and gave them all back.
	st := r.app.Pool().Stats()
	for _, s := range st.Shards {
		if s.Open != s.Idle || s.Open > 2 {
			t.Errorf("after the requests: %+v (every open connection should be idle, one per active tenant at most)", s)
		}
	}
	if st.Connects > 2 {
		t.Errorf("%d connections opened for two tenants' sequential requests", st.Connects)
	}
}

// A tenant suspended while it holds connections loses them, and is then
// refused a database.
func TestSuspendedTenantLosesItsConnections(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	if code, body := r.do(t, "GET", "/notes", "acme", ""); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if s := r.app.Pool().Stats(); s.Tenants != 1 {
		t.Fatalf("after acme's request the pool holds %d tenants", s.Tenants)
	}
	acme := r.tenants["acme"]
	suspended := acme
	suspended.State, suspended.Version = catalog.StateSuspended, 2
	r.ctxs.set(suspended)
	r.ctxs.events <- tenantctx.Event{Type: "tenant", Version: 2, TenantID: &acme.TenantID, Context: &suspended}
	testkit.Eventually(t, 10*time.Second, "acme's connections to close", func() (bool, error) {
		s := r.app.Pool().Stats()
		return s.Tenants == 0, fmt.Errorf("%+v", s)
	})
	if code, body := r.do(t, "GET", "/notes", "acme", ""); code != 403 {
		t.Fatalf("suspended acme: %d %s", code, body)
	}
}

func TestClientGoesThroughTheEgress(t *testing.T) {
	t.Parallel()
	var got struct {
		sync.Mutex
		path, trace string
	}
	egress := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Lock()
		got.path, got.trace = r.URL.RequestURI(), r.Header.Get("traceparent")
		got.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	defer egress.Close()
	c := &ServiceClient{service: "echo", egress: strings.TrimPrefix(egress.URL, "http://"), http: http.DefaultClient}
	ctx := context.WithValue(context.Background(), traceKey{}, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	resp, err := c.Get(ctx, "/hello?x=1")
	must(t, err)
	resp.Body.Close()
	got.Lock()
	defer got.Unlock()
	if got.path != "/echo/hello?x=1" || !strings.HasPrefix(got.trace, "00-0af7") {
		t.Fatalf("the sidecar saw %q with traceparent %q", got.path, got.trace)
	}
	for _, bad := range []*ServiceClient{{service: "a/b", egress: "x"}, {service: "echo"}} {
		if _, err := bad.Get(context.Background(), "/"); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestConfigIsChecked(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Product: "notes"},
		{Product: "notes", ControlURL: "http://x", Credential: "c", VerifyTokens: true},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	t.Setenv("PLINTH_SHARD_CAP", "lots")
	if _, err := FromEnv(); err == nil {
		t.Error("a bad PLINTH_SHARD_CAP was accepted")
	}
	if _, err := DB(context.Background()); !errors.Is(err, errNoApp) {
		t.Errorf("DB outside a request: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
