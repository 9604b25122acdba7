package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// The test binary doubles as the plinth binary: with PLINTH_TEST_MAIN set
// it runs main, so the tests can start real plinth processes and kill them.
func TestMain(m *testing.M) {
	if os.Getenv("PLINTH_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	testkit.Main(m)
}

// plinth returns a command that runs this binary as plinth.
func plinth(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "PLINTH_TEST_MAIN=1"), env...)
	return cmd
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

const token = "e2e-admin-token-0123456789"

func migrateControl(ctx context.Context, pool *pgxpool.Pool) error {
	logger := slog.New(slog.DiscardHandler)
	if err := catalog.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	return provision.Migrate(ctx, pool, logger)
}

// startWorker starts `plinth serve --role worker` as a subprocess with
// timings short enough for a test to see rescues and sweeps.
func startWorker(t *testing.T, ctx context.Context, dsn string) *exec.Cmd {
	t.Helper()
	cmd := plinth(ctx, nil, "serve", "--role", "worker", "--database-url", dsn, "--log-level", "warn",
		"--job-timeout", "5s", "--rescue-after", "7s", "--retry-base", "100ms", "--retry-max", "1s",
		"--health-interval", "500ms", "--refill-interval", "500ms", "--sweep-interval", "500ms", "--abandon-after", "5s")
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// kill -9 of the worker (a real subprocess) during 50 concurrent
// provisionings, then a restart: all 50 end active, with one installation
// and one database each, and no database on the shard the catalog does not
// know as warm or assigned.
func TestWorkerKilledDuringProvisioning(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 5*time.Minute)
	pool, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	shard := testkit.NewCluster(t)
	srv, err := server.Start(ctx, server.Config{DatabaseURL: dsn, Roles: []server.Role{server.RoleControl},
		Listen: "127.0.0.1:0", AdminToken: token})
	must(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	c := api.NewClient("http://"+srv.Addr(), token)
	must(t, errOf(c.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"})))
	must(t, errOf(c.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: shard.DSN("postgres")})))
	pool3 := 3
	must(t, errOf(c.RegisterProduct(ctx, api.RegisterProductRequest{Name: "notes", Default: true, WarmPoolSize: &pool3,
		Migrations: []catalog.Migration{{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id int);"}}})))

	worker := startWorker(t, ctx, dsn)
	var ops []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.CreateTenant(ctx, api.CreateTenantRequest{Slug: fmt.Sprintf("tenant-%02d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ops = append(ops, resp.Operation.ID.String())
			mu.Unlock()
		}()
	}
	wg.Wait()
	countActive := func() int {
		var n int
		must(t, pool.QueryRow(ctx, `SELECT count(*) FROM tenants WHERE state = 'active'`).Scan(&n))
		return n
	}
	// Kill the worker while it is in the middle of the batch.
	testkit.Eventually(t, 2*time.Minute, "some tenants to be active", func() (bool, error) { return countActive() >= 5, nil })
	must(t, worker.Process.Signal(syscall.SIGKILL))
	_ = worker.Wait()
	killedAt := countActive()
	t.Logf("worker killed with %d of 50 tenants active", killedAt)
	if killedAt == 50 {
		t.Fatal("the worker finished before it was killed; the test proves nothing")
	}

	startWorker(t, ctx, dsn)
	for _, id := range ops {
		op, err := c.WaitOperation(ctx, id, nil)
		must(t, err)
		if op.State != catalog.OperationSucceeded {
			t.Fatalf("operation %s: %+v", id, op)
		}
	}
	if n := countActive(); n != 50 {
		t.Fatalf("%d tenants active, want 50", n)
	}
	var installations, databases, distinct int
	must(t, pool.QueryRow(ctx, `SELECT count(*), count(d.id), count(DISTINCT d.name) FROM installations i
		LEFT JOIN tenant_databases d ON d.installation_id = i.id AND d.state = 'assigned'`).Scan(&installations, &databases, &distinct))
	if installations != 50 || databases != 50 || distinct != 50 {
		t.Fatalf("%d installations with %d assigned databases (%d distinct), want 50 each", installations, databases, distinct)
	}
	assertShardMatchesCatalog(t, ctx, pool, shard.DSN("postgres"))
}

// assertShardMatchesCatalog waits (the sweeper drops what killed workers
// left) until the shard holds exactly the catalog's warm and assigned
// databases, each carrying its own identity.
func assertShardMatchesCatalog(t *testing.T, ctx context.Context, control *pgxpool.Pool, shardDSN string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, shardDSN)
	must(t, err)
	defer conn.Close(ctx)
	var onShard, inCatalog []string
	testkit.Eventually(t, 2*time.Minute, "the shard to hold exactly the catalog's databases", func() (bool, error) {
		rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 't\_%' ORDER BY 1`)
		if err != nil {
			return false, err
		}
		onShard, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return false, err
		}
		rows, err = control.Query(ctx, `SELECT name FROM tenant_databases WHERE state IN ('warm', 'assigned') ORDER BY 1`)
		if err != nil {
			return false, err
		}
		if inCatalog, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return false, err
		}
		return slices.Equal(onShard, inCatalog), fmt.Errorf("shard has %d, catalog %d", len(onShard), len(inCatalog))
	})
}

func errOf[T any](_ T, err error) error { return err }

// The README's flow: plinth dev starts with embedded defaults, a tenant is
// created with one CLI command and ends active with its database on a
// shard; Ctrl-C stops everything; a second start is refused while one runs;
// a restart reuses the state; after kill -9 the next start adopts the
// clusters it left running.
func TestDevStackFlow(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 5*time.Minute)
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	home := testkit.Dir(t)
	env := []string{"PLINTH_HOME=" + home, "PLINTH_DATABASE_URL="}

	startDev := func() (*exec.Cmd, *bytes.Buffer) {
		var out bytes.Buffer
		dev := plinth(ctx, env, "dev", "--listen", "127.0.0.1:0", "--edge-listen", "127.0.0.1:0", "--shards", "2", "--warm-pool", "1")
		dev.Stdout, dev.Stderr = &out, &out
		must(t, dev.Start())
		testkit.Eventually(t, 2*time.Minute, "plinth dev to be ready", func() (bool, error) {
			return strings.Contains(out.String(), "Plinth is running"), fmt.Errorf("output so far: %s", out.String())
		})
		return dev, &out
	}
	run := func(args ...string) (string, error) {
		out, err := plinth(ctx, env, args...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { devstack.StopClusters(home) })

	dev, out := startDev()
	if !strings.Contains(out.String(), "tenant create acme --wait") {
		t.Fatalf("the banner does not show how to create a tenant:\n%s", out)
	}
	got, err := run("tenant", "create", "acme", "--product", "tracker", "--product", "notes", "--wait", "-o", "json")
	if err != nil {
		t.Fatalf("tenant create: %v\n%s", err, got)
	}
	var created api.TenantResponse
	must(t, json.Unmarshal([]byte(got), &created))
	inst := created.Tenant.Installations
	slices.SortFunc(inst, func(a, b catalog.Installation) int { return strings.Compare(a.Product, b.Product) })
	if created.Tenant.State != catalog.StateActive || len(inst) != 2 || inst[0].Product != devstack.SampleProduct ||
		inst[1].Product != devstack.DefaultProduct || inst[0].Database == "" || inst[1].Database == "" {
		t.Fatalf("created tenant: %s", got)
	}
	st, err := devstack.ReadState(home)
	must(t, err)
	shardPort := st.Shards[slices.IndexFunc(st.Shards, func(s devstack.ClusterInfo) bool { return s.Name == inst[0].Shard })].Port
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://plinth:%s@127.0.0.1:%d/%s", st.Password, shardPort, inst[0].Database))
	must(t, err)
	var tenantID string
	// The identity is stamped right after the tenant is activated.
	testkit.Eventually(t, time.Minute, "the database's identity to be stamped", func() (bool, error) {
		err := conn.QueryRow(ctx, `SELECT coalesce(tenant_id::text, '') FROM plinth.identity`).Scan(&tenantID)
		return err == nil && tenantID != "", err
	})
	conn.Close(ctx)
	if tenantID != created.Tenant.ID.String() {
		t.Fatalf("database identity says tenant %s, want %s", tenantID, created.Tenant.ID)
	}

	// The sample services answer only through their sidecars, as the tenant.
	if got, err := run("dev", "call", "notes", "/notes", "--tenant", "acme", "-d", `{"body": "first note"}`); err != nil || !strings.Contains(got, `"body":"first note"`) {
		t.Fatalf("dev call notes (add): %v\n%s", err, got)
	}
	if got, err := run("dev", "call", "notes", "/echo", "--tenant", "acme"); err != nil ||
		!strings.Contains(got, `"caller":"notes"`) || !strings.Contains(got, created.Tenant.ID.String()) {
		t.Fatalf("notes -> echo through the sidecars: %v\n%s", err, got)
	}
	if got, err := run("dev", "call", "notes", "/notes"); err == nil || !strings.Contains(got, "tenant_required") {
		t.Fatalf("notes without a tenant: %v\n%s", err, got)
	}

	// The edge routes acme's Host to notes with acme's context; a
	// suspended tenant is refused soon after, and served again on resume.
	st, err = devstack.ReadState(home)
	must(t, err)
	viaEdge := func(host string) (int, string) { return edgeDo(t, ctx, st.EdgeURL, host, "GET", "/notes", "", nil) }
	if code, body := viaEdge("ACME.plinth.localhost."); code != 200 || !strings.Contains(body, `"tenant":"acme"`) || !strings.Contains(body, "first note") {
		t.Fatalf("through the edge: %d %s", code, body)
	}
	if code, body := viaEdge("nobody.plinth.localhost"); code != 404 || !strings.Contains(body, "tenant_not_found") {
		t.Fatalf("an unknown tenant through the edge: %d %s", code, body)
	}
	trackerThroughTheEdge(t, ctx, run, st.EdgeURL, created.Tenant.ID.String())
	if got, err := run("dev", "call", "tracker", "/api/projects", "--tenant", "acme"); err != nil || !strings.Contains(got, `"key":"ACME"`) {
		t.Fatalf("dev call tracker: %v\n%s", err, got)
	}

	if got, err := run("tenant", "suspend", "acme", "--reason", "e2e"); err != nil {
		t.Fatalf("suspend: %v\n%s", err, got)
	}
	testkit.Eventually(t, 30*time.Second, "the edge to refuse suspended acme", func() (bool, error) {
		code, body := viaEdge("acme.plinth.localhost")
		return code == 403 && strings.Contains(body, "tenant_suspended"), fmt.Errorf("%d %s", code, body)
	})
	if got, err := run("tenant", "resume", "acme"); err != nil {
		t.Fatalf("resume: %v\n%s", err, got)
	}
	testkit.Eventually(t, 30*time.Second, "the edge to serve acme again", func() (bool, error) {
		code, body := viaEdge("acme.plinth.localhost")
		return code == 200, fmt.Errorf("%d %s", code, body)
	})

	if got, err := run("dev", "--listen", "127.0.0.1:0"); err == nil || !strings.Contains(got, "already running") {
		t.Fatalf("a second plinth dev: %v\n%s", err, got)
	}

	must(t, dev.Process.Signal(os.Interrupt))
	must(t, dev.Wait())
	if got, err := run("tenant", "list"); err == nil {
		t.Fatalf("the API still answers after Ctrl-C:\n%s", got)
	}

	dev, _ = startDev()
	if got, err := run("tenant", "get", "acme"); err != nil || !strings.Contains(got, "active") {
		t.Fatalf("after a restart, tenant get: %v\n%s", err, got)
	}
	must(t, dev.Process.Signal(syscall.SIGKILL))
	_ = dev.Wait()
	dev, out = startDev()
	if !strings.Contains(out.String(), "Adopted Postgres") {
		t.Fatalf("after kill -9 the next start did not adopt the clusters:\n%s", out)
	}
	if got, err := run("tenant", "create", "initech", "--wait"); err != nil {
		t.Fatalf("tenant create after adoption: %v\n%s", err, got)
	}
	must(t, dev.Process.Signal(os.Interrupt))
	must(t, dev.Wait())
}

func TestCLIErrors(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	home := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "list"}, "no Plinth API to talk to"},
		{[]string{"tenant", "create"}, "accepts 1 arg"},
		{[]string{"tenant", "purge", "acme"}, "--reason"},
		{[]string{"-o", "yaml", "tenant", "list"}, "--output must be table or json"},
		{[]string{"serve", "--role", "edge"}, "--region"},
		{[]string{"serve", "--role", "bogus"}, "unknown role"},
		{[]string{"serve", "--role", "edge,control"}, "each run alone"},
		{[]string{"serve", "--role", "worker"}, "no control database"},
		{[]string{"serve", "--role", "worker", "--database-url", "postgres://x@127.0.0.1:1/x", "--backup-config", "/nonexistent.json"}, "--backup-config"},
		{[]string{"backup", "settings"}, "--backup-config is required"},
		{[]string{"product", "register", "x", "--migrations", "/nonexistent"}, "--migrations /nonexistent"},
		{[]string{"dev", "--shards", "99"}, "--shards must be between 1 and 16"},
		{[]string{"tenant", "list", "--bogus"}, "unknown flag"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := plinth(ctx, []string{"PLINTH_HOME=" + home, "PLINTH_URL=", "PLINTH_TOKEN=", "PLINTH_DATABASE_URL="}, tt.args...).CombinedOutput()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if err == nil || !strings.Contains(string(out), tt.want) || len(lines) != 1 || !strings.HasPrefix(lines[0], "plinth: ") {
				t.Fatalf("exit %v, output %q: want a non-zero exit and one line 'plinth: …%s…'", err, out, tt.want)
			}
		})
	}
}

// The benchmark runs end to end and prints its table (no timing asserted).
func TestBenchProvisionSmoke(t *testing.T) {
	t.Parallel()
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	ctx := testkit.Context(t, 5*time.Minute)
	out, err := plinth(ctx, nil, "bench", "provision", "--tenants", "3", "--scale", "5", "--concurrency", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, want := range []string{"(a) raw CREATE DATABASE", "(b) Plinth cold", "(c) Plinth warm pool", "(b)/(a) at p50", "5 tenants on one shard", "0 errors"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bench output lacks %q:\n%s", want, out)
		}
	}
}

// The sidecar benchmark runs end to end and prints its table (no timing
// asserted).
func TestBenchSidecarSmoke(t *testing.T) {
	t.Parallel()
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	ctx := testkit.Context(t, 5*time.Minute)
	out, err := plinth(ctx, nil, "bench", "sidecar", "--duration", "1s", "--rate", "200").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, want := range []string{"(a) direct", "(b) Plinth sidecar", "(c) httputil.ReverseProxy", "added p99 of (b) over (a)", "token verify: cached"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bench output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "errors or non-2xx") {
		t.Errorf("requests failed during the benchmark:\n%s", out)
	}
}

// edgeDo sends one request to the edge as the tenant Host names.
func edgeDo(t *testing.T, ctx context.Context, edgeURL, host, method, path, body string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, edgeURL+path, strings.NewReader(body))
	must(t, err)
	req.Host = host
	for k, v := range header {
		req.Header[k] = v
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// trackerThroughTheEdge is the issue tracker's flow as users see it: acme
// (already created) and globex (created here with the CLI, so with the
// default product only) each make issues through the edge, and neither can
// read, list, update, comment on or resolve by ARI the other's, whatever
// IDs, ARIs or headers it crafts.
func trackerThroughTheEdge(t *testing.T, ctx context.Context, run func(...string) (string, error), edgeURL, acmeID string) {
	t.Helper()
	got, err := run("tenant", "create", "globex", "--wait", "-o", "json")
	if err != nil {
		t.Fatalf("tenant create globex: %v\n%s", err, got)
	}
	var globex api.TenantResponse
	must(t, json.Unmarshal([]byte(got), &globex))
	if in := globex.Tenant.Installations; len(in) != 1 || in[0].Product != devstack.DefaultProduct {
		t.Fatalf("globex's installations (want the default product only): %s", got)
	}
	globexID := globex.Tenant.ID.String()
	as := func(slug, method, path, body string, want int) string {
		t.Helper()
		code, b := edgeDo(t, ctx, edgeURL, slug+".plinth.localhost", method, path, body, nil)
		if code != want {
			t.Fatalf("%s %s %s as %s through the edge: %d %s, want %d", method, path, body, slug, code, b, want)
		}
		return b
	}
	ariOf := func(b string) string {
		var is struct{ ARI string }
		must(t, json.Unmarshal([]byte(b), &is))
		return is.ARI
	}
	// The edge learns of a new tenant from the change feed, a moment after
	// it is active.
	testkit.Eventually(t, 30*time.Second, "the edge to serve globex", func() (bool, error) {
		code, b := edgeDo(t, ctx, edgeURL, "globex.plinth.localhost", "GET", "/api/projects", "", nil)
		return code == 200, fmt.Errorf("%d %s", code, b)
	})
	if b := as("globex", "GET", "/api/projects", "", 200); !strings.Contains(b, `"items":[]`) {
		t.Fatalf("a new tenant's tracker is not empty: %s", b)
	}
	as("acme", "POST", "/api/projects", `{"key":"ACME","name":"Acme roadmap"}`, 201)
	acmeARI := ariOf(as("acme", "POST", "/api/projects/ACME/issues", `{"title":"acme secret plan"}`, 201))
	as("acme", "POST", "/api/projects/ACME/issues", `{"title":"acme second"}`, 201)
	as("globex", "POST", "/api/projects", `{"key":"GLOB","name":"Globex"}`, 201)
	globexARI := ariOf(as("globex", "POST", "/api/projects/GLOB/issues", `{"title":"globex own"}`, 201))
	if !strings.Contains(acmeARI, acmeID) || !strings.Contains(globexARI, globexID) {
		t.Fatalf("ARIs do not name their tenants: %s %s", acmeARI, globexARI)
	}
	if b := as("acme", "GET", "/p/ACME", "", 200); !strings.Contains(b, "acme secret plan") || !strings.Contains(b, "<html") {
		t.Fatalf("acme's project page through the edge: %s", b)
	}
	crafted := strings.Replace(acmeARI, acmeID, globexID, 1) // acme's issue number, globex's tenant
	for _, tt := range []struct {
		who, method, path, body string
		status                  int
		mustNot                 string
		header                  http.Header
	}{
		{"globex", "GET", "/api/projects", "", 200, "ACME", nil},
		{"globex", "GET", "/api/projects/ACME/issues", "", 200, "acme", nil},
		{"globex", "GET", "/api/issues/2", "", 404, "acme second", nil},
		{"globex", "PATCH", "/api/issues/2", `{"status":"done"}`, 404, "", nil},
		{"globex", "POST", "/api/issues/2/comments", `{"body":"x"}`, 404, "", nil},
		{"globex", "GET", "/api/resolve?ari=" + url.QueryEscape(acmeARI), "", 404, "acme", nil},
		{"globex", "GET", "/api/resolve?ari=" + url.QueryEscape(crafted), "", 200, "acme", nil},
		{"globex", "GET", "/p/ACME", "", 404, "acme", nil},
		{"globex", "GET", "/i/2", "", 404, "acme second", nil},
		// A client's own tenant header is stripped: globex stays globex.
		{"globex", "GET", "/api/issues/2", "", 404, "acme second", http.Header{"Plinth-Tenant-Id": {acmeID}}},
		{"acme", "GET", "/api/resolve?ari=" + url.QueryEscape(globexARI), "", 404, "globex", nil},
		{"acme", "GET", "/p/GLOB", "", 404, "globex", nil},
		{"acme", "GET", "/api/projects", "", 200, "GLOB", http.Header{"Plinth-Tenant-Id": {globexID}}},
	} {
		code, b := edgeDo(t, ctx, edgeURL, tt.who+".plinth.localhost", tt.method, tt.path, tt.body, tt.header)
		if code != tt.status || (tt.mustNot != "" && strings.Contains(b, tt.mustNot)) {
			t.Errorf("%s %s %s as %s through the edge: %d %s (want %d, never %q)", tt.method, tt.path, tt.body, tt.who, code, b, tt.status, tt.mustNot)
		}
	}
	// acme's issue is untouched.
	if b := as("acme", "GET", "/api/issues/2", "", 200); !strings.Contains(b, `"status":"open"`) {
		t.Fatalf("acme's second issue after globex's attempts: %s", b)
	}
}
