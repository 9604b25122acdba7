package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const token = "test-admin-token-0123456789"

func migrateControl(ctx context.Context, pool *pgxpool.Pool) error {
	logger := slog.New(slog.DiscardHandler)
	if err := catalog.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	return provision.Migrate(ctx, pool, logger)
}

type bundle struct {
	ctx      context.Context
	client   *api.Client
	base     string
	pool     *pgxpool.Pool
	check    *validator
	shardDSN string
}

// setup starts the control API and a worker on a fresh control database,
// with region r1, shard s1 (the package's cluster, or a cluster of the
// test's own) and product notes.
func setup(t *testing.T, ownShard ...bool) bundle {
	t.Helper()
	shard := testkit.SharedCluster(t)
	if len(ownShard) > 0 && ownShard[0] {
		shard = testkit.NewCluster(t)
	}
	ctx := testkit.Context(t, 3*time.Minute)
	_, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	srv, err := server.Start(ctx, server.Config{
		DatabaseURL: dsn, Roles: []server.Role{server.RoleControl, server.RoleWorker},
		Listen: "127.0.0.1:0", AdminToken: token,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Stop(ctx)
	})
	v := newValidator(t)
	b := bundle{ctx: ctx, base: "http://" + srv.Addr(), pool: srv.Pool(), check: v, shardDSN: shard.DSN("postgres")}
	b.client = api.NewClient(b.base, token)
	b.client.HTTP = &http.Client{Transport: v, Timeout: time.Minute}

	must(t, err1(b.client.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"})))
	must(t, err1(b.client.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: b.shardDSN})))
	must(t, err1(b.client.RegisterProduct(ctx, api.RegisterProductRequest{Name: "notes", Default: true, Migrations: []catalog.Migration{
		{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);"},
		{Version: 2, Name: "notes_created", SQL: "-- +goose Up\nALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();"},
	}})))
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func err1[T any](_ T, err error) error { return err }

// raw sends a request as given and returns the status and problem code.
func (b bundle) raw(t *testing.T, method, path, auth, contentType, body string, headers ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(b.ctx, method, b.base+path, strings.NewReader(body))
	must(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.client.HTTP.Do(req)
	must(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	code := ""
	if i := strings.Index(string(data), `"code":"`); i >= 0 {
		code = strings.SplitN(string(data)[i+8:], `"`, 2)[0]
	}
	return resp.StatusCode, code
}

// snapshot summarises everything a refused request must leave unchanged.
func (b bundle) snapshot(t *testing.T) string {
	t.Helper()
	var s string
	err := b.pool.QueryRow(b.ctx, `SELECT format('%s tenants, %s installations, %s databases, %s operations, %s audit, change log at %s, %s regions, %s shards',
		(SELECT count(*) FROM tenants), (SELECT count(*) FROM installations), (SELECT count(*) FROM tenant_databases),
		(SELECT count(*) FROM operations), (SELECT count(*) FROM audit_log),
		(SELECT coalesce(max(version), 0) FROM change_log), (SELECT count(*) FROM regions), (SELECT count(*) FROM shards))`).Scan(&s)
	must(t, err)
	conn, err := pgx.Connect(b.ctx, b.shardDSN)
	must(t, err)
	defer conn.Close(b.ctx)
	// The shard cluster is shared with the package's other tests: only the
	// databases this catalog knows of (Plinth records each before it
	// creates it) and its products' templates are this test's.
	var names, products []string
	must(t, b.pool.QueryRow(b.ctx, `SELECT coalesce(array_agg(name), '{}') FROM tenant_databases`).Scan(&names))
	must(t, b.pool.QueryRow(b.ctx, `SELECT coalesce(array_agg(name), '{}') FROM products`).Scan(&products))
	var dbs string
	must(t, conn.QueryRow(b.ctx, `SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '') FROM pg_database
		WHERE datname = ANY($1) OR EXISTS (SELECT 1 FROM unnest($2::text[]) p WHERE datname LIKE 'tpl\_' || p || '\_v%')`,
		names, products).Scan(&dbs))
	return s + "; shard databases: " + dbs
}

func (b bundle) createActive(t *testing.T, slug string) catalog.Tenant {
	t.Helper()
	resp, err := b.client.CreateTenant(b.ctx, api.CreateTenantRequest{Slug: slug})
	must(t, err)
	op, err := b.client.WaitOperation(b.ctx, resp.Operation.ID.String(), nil)
	must(t, err)
	if op.State != catalog.OperationSucceeded {
		t.Fatalf("provisioning %s: %+v", slug, op)
	}
	tn, err := b.client.GetTenant(b.ctx, slug)
	must(t, err)
	return tn
}

func TestTenantLifecycleOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t)

	resp, err := b.client.CreateTenant(b.ctx, api.CreateTenantRequest{Slug: "acme", DisplayName: "Acme Corp"})
	must(t, err)
	if resp.Tenant.State != catalog.StateProvisioning || resp.Operation == nil || resp.Tenant.Tier != api.TenantTierDefault {
		t.Fatalf("create response = %+v", resp)
	}
	op, err := b.client.GetOperation(b.ctx, resp.Operation.ID.String(), 30*time.Second)
	must(t, err)
	if op.State != catalog.OperationSucceeded {
		t.Fatalf("operation after a 30s wait = %+v", op)
	}
	tn, err := b.client.GetTenant(b.ctx, "acme")
	must(t, err)
	if tn.State != catalog.StateActive || tn.Installations[0].Shard != "s1" {
		t.Fatalf("tenant = %+v", tn)
	}
	byID, err := b.client.GetTenant(b.ctx, tn.ID.String())
	must(t, err)
	if byID.Slug != "acme" {
		t.Fatalf("by id: %+v", byID)
	}

	b.createActive(t, "globex")
	page, err := b.client.ListTenants(b.ctx, api.TenantQuery{Limit: 1})
	must(t, err)
	if len(page.Items) != 1 || page.NextCursor == "" {
		t.Fatalf("first page = %+v", page)
	}
	page2, err := b.client.ListTenants(b.ctx, api.TenantQuery{Limit: 1, Cursor: page.NextCursor})
	must(t, err)
	if len(page2.Items) != 1 || page2.Items[0].ID == page.Items[0].ID || page2.NextCursor != "" {
		t.Fatalf("second page = %+v", page2)
	}
	filtered, err := b.client.ListTenants(b.ctx, api.TenantQuery{Shard: "s1", State: "active", Region: "r1"})
	must(t, err)
	if len(filtered.Items) != 2 {
		t.Fatalf("filtered list has %d tenants", len(filtered.Items))
	}

	sus, err := b.client.TenantAction(b.ctx, "acme", catalog.ActionSuspend, "unpaid invoice")
	must(t, err)
	if sus.Tenant.State != catalog.StateSuspended || sus.Operation != nil {
		t.Fatalf("suspend = %+v", sus)
	}
	list, err := b.client.ListTenants(b.ctx, api.TenantQuery{State: "suspended"})
	must(t, err)
	if len(list.Items) != 1 || list.Items[0].Slug != "acme" {
		t.Fatalf("suspended tenants = %+v", list.Items)
	}
	audit, err := b.client.TenantAudit(b.ctx, "acme")
	must(t, err)
	last := audit[len(audit)-1]
	if last.Action != "tenant.suspend" || last.Actor != api.ActorAdmin || last.Reason != "unpaid invoice" || last.RequestID == "" {
		t.Fatalf("last audit = %+v", last)
	}

	if b.check.checked < 10 {
		t.Fatalf("only %d responses were checked against openapi.json", b.check.checked)
	}
}

func TestBadRequestsChangeNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, true) // a shard of its own, so its databases can be compared exactly
	b.createActive(t, "taken")
	auth := "Bearer " + token
	json := "application/json"

	tests := []struct {
		name, method, path, auth, contentType, body string
		headers                                     []string
		status                                      int
		code                                        string
	}{
		{"invalid slug", "POST", "/v1/tenants", auth, json, `{"slug":"Not_A_Label"}`, nil, 422, "invalid_slug"},
		{"short slug", "POST", "/v1/tenants", auth, json, `{"slug":"ab"}`, nil, 422, "invalid_slug"},
		{"reserved slug", "POST", "/v1/tenants", auth, json, `{"slug":"admin"}`, nil, 422, "reserved_slug"},
		{"duplicate slug", "POST", "/v1/tenants", auth, json, `{"slug":"taken"}`, nil, 409, "slug_taken"},
		{"unknown region", "POST", "/v1/tenants", auth, json, `{"slug":"acme","region":"mars-1"}`, nil, 422, "unknown_region"},
		{"unknown product", "POST", "/v1/tenants", auth, json, `{"slug":"acme","products":["nope"]}`, nil, 422, "unknown_product"},
		{"tier out of range", "POST", "/v1/tenants", auth, json, `{"slug":"acme","tier":7}`, nil, 422, "invalid_tier"},
		{"malformed json", "POST", "/v1/tenants", auth, json, `{"slug":`, nil, 400, "invalid_json"},
		{"wrong type", "POST", "/v1/tenants", auth, json, `{"slug":42}`, nil, 400, "invalid_json"},
		{"unknown field", "POST", "/v1/tenants", auth, json, `{"slug":"acme","admin":true}`, nil, 400, "invalid_json"},
		{"two objects", "POST", "/v1/tenants", auth, json, `{"slug":"acme"}{"slug":"acme2"}`, nil, 400, "invalid_json"},
		{"empty body", "POST", "/v1/tenants", auth, json, ``, nil, 400, "invalid_json"},
		{"oversized json", "POST", "/v1/tenants", auth, json, `{"slug":"acme","display_name":"` + strings.Repeat("x", 70<<10) + `"}`, nil, 413, "body_too_large"},
		{"oversized with key", "POST", "/v1/tenants", auth, json, `{"slug":"` + strings.Repeat("x", 70<<10) + `"}`, []string{"Idempotency-Key", "k-big"}, 413, "body_too_large"},
		{"not json", "POST", "/v1/tenants", auth, "text/plain", `slug=acme`, nil, 415, "unsupported_media_type"},
		{"missing token", "POST", "/v1/tenants", "", json, `{"slug":"acme"}`, nil, 401, "token_missing"},
		{"wrong token", "POST", "/v1/tenants", "Bearer wrong-token-wrong-token", json, `{"slug":"acme"}`, nil, 401, "token_invalid"},
		{"basic auth", "GET", "/v1/tenants", "Basic YWRtaW46YWRtaW4=", "", ``, nil, 401, "token_malformed"},
		{"illegal transition", "POST", "/v1/tenants/taken/resume", auth, json, `{}`, nil, 409, "illegal_transition"},
		{"purge an active tenant", "POST", "/v1/tenants/taken/purge", auth, json, `{"reason":"x"}`, nil, 409, "illegal_transition"},
		{"action on unknown tenant", "POST", "/v1/tenants/nobody/suspend", auth, json, `{}`, nil, 404, "tenant_not_found"},
		{"unknown tenant", "GET", "/v1/tenants/nobody", auth, "", ``, nil, 404, "tenant_not_found"},
		{"unknown operation", "GET", "/v1/operations/not-a-uuid", auth, "", ``, nil, 404, "operation_not_found"},
		{"bad wait", "GET", "/v1/operations/01a209c7-33eb-7250-a7c9-d9668ff3cb76?wait=1h", auth, "", ``, nil, 422, "invalid_wait"},
		{"bad cursor", "GET", "/v1/tenants?cursor=zzz", auth, "", ``, nil, 422, "invalid_cursor"},
		{"bad limit", "GET", "/v1/tenants?limit=100000", auth, "", ``, nil, 422, "invalid_limit"},
		{"bad state filter", "GET", "/v1/tenants?state=sleeping", auth, "", ``, nil, 422, "invalid_state"},
		{"unknown route", "GET", "/v1/nothing", auth, "", ``, nil, 404, "not_found"},
		{"wrong method", "DELETE", "/v1/tenants", auth, "", ``, nil, 405, "method_not_allowed"},
		{"bad idempotency key", "POST", "/v1/tenants", auth, json, `{"slug":"acme"}`, []string{"Idempotency-Key", "caf\u00e9"}, 400, "invalid_idempotency_key"},
		{"unreachable shard", "POST", "/v1/shards", auth, json, `{"name":"s9","region":"r1","dsn":"postgres://u:secret@127.0.0.1:1/postgres?connect_timeout=1"}`, nil, 422, "shard_unreachable"},
		{"invalid dsn", "POST", "/v1/shards", auth, json, `{"name":"s9","region":"r1","dsn":"::::"}`, nil, 422, "invalid_dsn"},
		{"bad shard name", "POST", "/v1/shards", auth, json, `{"name":"S 9","region":"r1","dsn":"postgres://127.0.0.1/x"}`, nil, 422, "invalid_name"},
		{"duplicate region", "POST", "/v1/regions", auth, json, `{"name":"r1"}`, nil, 409, "region_exists"},
		{"changed migration", "POST", "/v1/products", auth, json, `{"name":"notes","migrations":[{"version":1,"name":"x","sql":"-- +goose Up\nSELECT 1;"},{"version":2,"name":"y","sql":"-- +goose Up\nSELECT 2;"}]}`, nil, 409, "migration_changed"},
		{"warm pool too big", "PUT", "/v1/warm-pools/s1/notes", auth, json, `{"size":5000}`, nil, 422, "invalid_size"},
	}
	before := b.snapshot(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code := b.raw(t, tt.method, tt.path, tt.auth, tt.contentType, tt.body, tt.headers...)
			if status != tt.status || code != tt.code {
				t.Errorf("got %d %q, want %d %q", status, code, tt.status, tt.code)
			}
		})
	}
	if after := b.snapshot(t); after != before {
		t.Fatalf("refused requests changed the catalog:\n before: %s\n after:  %s", before, after)
	}
}

func TestIdempotencyKeyOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := `{"slug":"acme"}`
	auth := "Bearer " + token

	// Concurrent requests with one key: one tenant, the same answer for all.
	var wg sync.WaitGroup
	statuses := make(chan int, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _ := b.raw(t, "POST", "/v1/tenants", auth, "application/json", body, "Idempotency-Key", "create-acme")
			statuses <- status
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusAccepted {
			t.Fatalf("a request with the shared key got %d, want 202 (the first answer, replayed)", s)
		}
	}
	var n int
	must(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM tenants WHERE slug = 'acme'`).Scan(&n))
	if n != 1 {
		t.Fatalf("%d tenants named acme, want 1", n)
	}
	status, code := b.raw(t, "POST", "/v1/tenants", auth, "application/json", `{"slug":"other"}`, "Idempotency-Key", "create-acme")
	if status != 422 || code != "idempotency_key_reused" {
		t.Fatalf("reusing the key for another request: %d %s", status, code)
	}
	// A failed request stores nothing: the key works once the request is fixed.
	status, _ = b.raw(t, "POST", "/v1/tenants", auth, "application/json", `{"slug":"admin"}`, "Idempotency-Key", "k2")
	if status != 422 {
		t.Fatalf("reserved slug: %d", status)
	}
	status, _ = b.raw(t, "POST", "/v1/tenants", auth, "application/json", `{"slug":"initech"}`, "Idempotency-Key", "k2")
	if status != 202 {
		t.Fatalf("retry with a fixed body: %d", status)
	}
}

func TestConcurrentCreatesOfOneSlugOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var wg sync.WaitGroup
	results := make(chan string, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, code := b.raw(t, "POST", "/v1/tenants", "Bearer "+token, "application/json", `{"slug":"race"}`)
			results <- fmt.Sprintf("%d %s", status, code)
		}()
	}
	wg.Wait()
	close(results)
	created := 0
	for r := range results {
		switch r {
		case "202 ":
			created++
		case "409 slug_taken":
		default:
			t.Fatalf("unexpected answer %q", r)
		}
	}
	if created != 1 {
		t.Fatalf("%d creates accepted, want 1", created)
	}
}

func TestHealthMetricsAndDocs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.createActive(t, "acme")
	for _, path := range []string{"/healthz", "/readyz", "/openapi.json"} {
		if status, _ := b.raw(t, "GET", path, "", "", ""); status != 200 {
			t.Fatalf("%s: %d", path, status)
		}
	}
	resp, err := http.Get(b.base + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`plinth_tenants{state="active"} 1`, `plinth_shard_healthy{region="r1",shard="s1"} 1`, `plinth_api_requests_total`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Secrets never come back: the shard's password is not in any response.
func TestShardDSNIsRedacted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	shards, err := b.client.ListShards(b.ctx, "")
	must(t, err)
	pw := testkit.SharedCluster(t).Password
	for _, sh := range shards {
		if strings.Contains(sh.DSN, pw) || sh.DSN == "" {
			t.Fatalf("shard DSN shown as %q", sh.DSN)
		}
	}
	changes, err := http.NewRequest("GET", b.base+"/v1/changes?limit=1000", nil)
	must(t, err)
	changes.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.client.HTTP.Do(changes)
	must(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(data), pw) {
		t.Fatal("the change log exposes the shard password")
	}
}

// Who backs a shard up is recorded (and audited); a bad value or an
// unknown shard is refused and changes nothing.
func TestShardBackups(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sh, err := b.client.SetShardBackups(b.ctx, "s1", "provider", "moved to a managed database")
	must(t, err)
	if sh.Backups != "provider" {
		t.Fatalf("shard after backups provider: %+v", sh)
	}
	for _, tt := range []struct{ shard, backups, code string }{
		{"s1", "nobody", "invalid_backups"},
		{"nope", "plinth", "shard_not_found"},
	} {
		_, err := b.client.SetShardBackups(b.ctx, tt.shard, tt.backups, "")
		var p *api.Problem
		if !errors.As(err, &p) || p.Code != tt.code {
			t.Errorf("backups %s of %s: %v, want %s", tt.backups, tt.shard, err, tt.code)
		}
	}
	if got, err := b.client.GetShard(b.ctx, "s1"); err != nil || got.Backups != "provider" {
		t.Fatalf("s1 after the refusals: %+v %v", got, err)
	}
}
