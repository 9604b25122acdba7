package tracker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/examples/tracker"
	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/testkit"
	"github.com/plinth-platform/plinth/sdk"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const adminToken = "tracker-test-admin-token-012345"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type rig struct {
	ctx     context.Context
	url     string
	tenants map[string]string // slug -> ID
}

// setup runs a control plane with a worker and a shard, registers the
// tracker from its migrations, provisions acme and globex, and serves the
// tracker on the SDK against that control plane, as its sidecar would
// call it (with the verified tenant in Plinth-Tenant-Id).
func setup(t *testing.T) *rig {
	t.Helper()
	ctx := testkit.Context(t, 3*time.Minute)
	shard := testkit.SharedCluster(t)
	_, dsn := testkit.MigratedDatabase(t, "control", func(ctx context.Context, pool *pgxpool.Pool) error {
		logger := slog.New(slog.DiscardHandler)
		if err := catalog.Migrate(ctx, pool, logger); err != nil {
			return err
		}
		return provision.Migrate(ctx, pool, logger)
	})
	srv, err := server.Start(ctx, server.Config{DatabaseURL: dsn, Roles: []server.Role{server.RoleControl, server.RoleWorker},
		Listen: "127.0.0.1:0", AdminToken: adminToken,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	must(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	control := "http://" + srv.Addr()
	admin := api.NewClient(control, adminToken)
	must(t, admin.Do(ctx, "POST", "/v1/regions", api.CreateRegionRequest{Name: "r1"}, nil))
	must(t, admin.Do(ctx, "POST", "/v1/shards", api.CreateShardRequest{Name: "s1", Region: "r1", DSN: shard.DSN("postgres")}, nil))
	sub, err := fs.Sub(tracker.Migrations, "migrations")
	must(t, err)
	ms, err := catalog.ReadMigrations(sub)
	must(t, err)
	must(t, admin.Do(ctx, "POST", "/v1/products", api.RegisterProductRequest{Name: tracker.Product, Default: true, Migrations: ms}, nil))
	r := &rig{ctx: ctx, tenants: map[string]string{}}
	for _, slug := range []string{"acme", "globex"} {
		resp, err := admin.CreateTenant(ctx, api.CreateTenantRequest{Slug: slug})
		must(t, err)
		op, err := admin.WaitOperation(ctx, resp.Operation.ID.String(), nil)
		must(t, err)
		if op.State != catalog.OperationSucceeded {
			t.Fatalf("provisioning %s: %+v", slug, op)
		}
		r.tenants[slug] = resp.Tenant.ID.String()
	}
	svc, err := admin.CreateService(ctx, api.ServiceRequest{Name: "tracker", AllowedCallers: []string{"edge"}, Product: tracker.Product})
	must(t, err)
	app, err := sdk.New(sdk.Config{Service: "tracker", Product: tracker.Product, ControlURL: control, Credential: svc.Credential,
		DBUser: localpg.Superuser, DBPassword: shard.Password, Logger: slog.New(slog.DiscardHandler)})
	must(t, err)
	must(t, app.Start(ctx))
	t.Cleanup(app.Close)
	h, err := tracker.Handler(app)
	must(t, err)
	web := httptest.NewServer(app.Handler(h))
	t.Cleanup(web.Close)
	r.url = web.URL
	return r
}

// do sends a request as tenant (a slug, a raw header value, or "" for none).
func (r *rig) do(t *testing.T, tenant, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(r.ctx, method, r.url+path, strings.NewReader(body))
	must(t, err)
	if body != "" && !strings.HasPrefix(body, "key=") && !strings.HasPrefix(body, "title=") {
		req.Header.Set("Content-Type", "application/json")
	} else if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if id, ok := r.tenants[tenant]; ok {
		req.Header.Set("Plinth-Tenant-Id", id)
	} else if tenant != "" {
		req.Header.Set("Plinth-Tenant-Id", tenant)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *rig) json(t *testing.T, tenant, method, path, body string, want int, out any) {
	t.Helper()
	code, b := r.do(t, tenant, method, path, body)
	if code != want {
		t.Fatalf("%s %s %s as %s: %d %s, want %d", method, path, body, tenant, code, b, want)
	}
	if out != nil {
		must(t, json.Unmarshal([]byte(b), out))
	}
}

func TestTrackerKeepsTenantsApart(t *testing.T) {
	t.Parallel()
	r := setup(t)
	var acmeIssue, globexIssue tracker.Issue
	r.json(t, "acme", "POST", "/api/projects", `{"key":"ACME","name":"Acme roadmap"}`, 201, nil)
	r.json(t, "acme", "POST", "/api/projects/ACME/issues", `{"title":"acme secret plan","assignee":"wile"}`, 201, &acmeIssue)
	r.json(t, "acme", "POST", fmt.Sprintf("/api/issues/%d/comments", acmeIssue.ID), `{"body":"only for acme","author":"wile"}`, 201, nil)
	r.json(t, "acme", "POST", "/api/projects/ACME/issues", `{"title":"second"}`, 201, nil)
	r.json(t, "globex", "POST", "/api/projects", `{"key":"GLOB","name":"Globex"}`, 201, nil)
	r.json(t, "globex", "POST", "/api/projects/GLOB/issues", `{"title":"globex own"}`, 201, &globexIssue)
	if !strings.HasPrefix(acmeIssue.ARI, "ari:cloud:tracker:"+r.tenants["acme"]+":issue/") {
		t.Fatalf("acme's issue ARI: %s", acmeIssue.ARI)
	}

	// globex's view: its own data only, whatever it asks for.
	foreignOwnID := strings.Replace(acmeIssue.ARI, r.tenants["acme"], r.tenants["globex"], 1)
	tests := []struct {
		name, method, path, body string
		status                   int
		mustNot                  string // never in the response
		must                     string
	}{
		{"list projects", "GET", "/api/projects", "", 200, "ACME", "GLOB"},
		{"list acme's project's issues", "GET", "/api/projects/ACME/issues", "", 200, "acme", `"items":[]`},
		{"read acme's second issue by ID", "GET", "/api/issues/2", "", 404, "second", ""},
		{"read issue 1: its own", "GET", fmt.Sprintf("/api/issues/%d", acmeIssue.ID), "", 200, "acme", "globex own"},
		{"update acme's second issue", "PATCH", "/api/issues/2", `{"status":"done"}`, 404, "", ""},
		{"comment on acme's second issue", "POST", "/api/issues/2/comments", `{"body":"x"}`, 404, "", ""},
		{"acme's comments", "GET", fmt.Sprintf("/api/issues/%d/comments", acmeIssue.ID), "", 200, "only for acme", ""},
		{"resolve acme's ARI", "GET", "/api/resolve?ari=" + url.QueryEscape(acmeIssue.ARI), "", 404, "acme", ""},
		{"resolve a crafted ARI: globex's own ID", "GET", "/api/resolve?ari=" + url.QueryEscape(foreignOwnID), "", 200, "acme", "globex own"},
		{"resolve another product's ARI", "GET", "/api/resolve?ari=" + url.QueryEscape(strings.Replace(globexIssue.ARI, ":tracker:", ":wiki:", 1)), "", 404, "", ""},
		{"resolve garbage", "GET", "/api/resolve?ari=ari:cloud:x", "", 400, "", ""},
		{"the HTML home", "GET", "/", "", 200, "ACME", "GLOB"},
		{"acme's project page", "GET", "/p/ACME", "", 404, "acme", ""},
		{"acme's second issue page", "GET", "/i/2", "", 404, "second", ""},
	}
	for _, tt := range tests {
		code, body := r.do(t, "globex", tt.method, tt.path, tt.body)
		if code != tt.status || (tt.mustNot != "" && strings.Contains(body, tt.mustNot)) || !strings.Contains(body, tt.must) {
			t.Errorf("globex: %s: %d %s (want %d, without %q, with %q)", tt.name, code, body, tt.status, tt.mustNot, tt.must)
		}
	}
	// acme's data is untouched.
	var got tracker.Issue
	r.json(t, "acme", "GET", "/api/issues/2", "", 200, &got)
	if got.Status != "open" || got.Title != "second" {
		t.Fatalf("acme's second issue: %+v", got)
	}
}

func TestTrackerRefusesBadInput(t *testing.T) {
	t.Parallel()
	r := setup(t)
	r.json(t, "acme", "POST", "/api/projects", `{"key":"ACME","name":"Acme"}`, 201, nil)
	r.json(t, "acme", "POST", "/api/projects/ACME/issues", `{"title":"one"}`, 201, nil)
	for _, tt := range []struct {
		tenant, method, path, body string
		status                     int
	}{
		{"", "GET", "/api/projects", "", 400},                         // no verified tenant: no database
		{"not-a-uuid", "GET", "/api/projects", "", 404},               // a tenant that is not one
		{"01a24914-dd44-72f7-8f19-668642b236de", "GET", "/", "", 404}, // an unknown tenant
		{"acme", "POST", "/api/projects", `{"key":"acme","name":"x"}`, 400},
		{"acme", "POST", "/api/projects", `{"key":"ACME","name":"again"}`, 400},
		{"acme", "POST", "/api/projects", `{"key":"NEW","name":""}`, 400},
		{"acme", "POST", "/api/projects", `{"key":"NEW","name":"x","admin":true}`, 400},
		{"acme", "POST", "/api/projects", `not json`, 400},
		{"acme", "POST", "/api/projects/ACME/issues", `{"title":"` + strings.Repeat("x", 201) + `"}`, 400},
		{"acme", "POST", "/api/projects/NOPE/issues", `{"title":"x"}`, 404},
		{"acme", "PATCH", "/api/issues/1", `{"status":"wontfix"}`, 400},
		{"acme", "GET", "/api/issues/abc", "", 404},
		{"acme", "GET", "/api/issues/-1", "", 404},
		{"acme", "POST", "/api/issues/1/comments", `{"body":""}`, 400},
		{"acme", "POST", "/projects", "key=bad&name=x", 400},
	} {
		if code, body := r.do(t, tt.tenant, tt.method, tt.path, tt.body); code != tt.status {
			t.Errorf("%s %s %s as %q: %d %s, want %d", tt.method, tt.path, tt.body, tt.tenant, code, body, tt.status)
		}
	}
	// Nothing changed: one project, one open issue.
	var ps struct{ Items []tracker.Project }
	r.json(t, "acme", "GET", "/api/projects", "", 200, &ps)
	var is struct{ Items []tracker.Issue }
	r.json(t, "acme", "GET", "/api/projects/ACME/issues", "", 200, &is)
	if len(ps.Items) != 1 || len(is.Items) != 1 || is.Items[0].Status != "open" {
		t.Fatalf("after refused requests: %+v %+v", ps.Items, is.Items)
	}
	// The HTML flow: a form post redirects to the new thing.
	code, _ := r.do(t, "acme", "POST", "/p/ACME/issues", "title=from+the+form&assignee=road")
	if code != http.StatusSeeOther {
		t.Fatalf("form post: %d", code)
	}
	if code, body := r.do(t, "acme", "GET", "/p/ACME", ""); code != 200 || !strings.Contains(body, "from the form") {
		t.Fatalf("project page: %d %s", code, body)
	}
}
