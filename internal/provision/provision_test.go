package provision_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func migrateControl(ctx context.Context, pool *pgxpool.Pool) error {
	logger := slog.New(slog.DiscardHandler)
	if err := catalog.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	return provision.Migrate(ctx, pool, logger)
}

var testMigrations = []catalog.Migration{
	{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);"},
	{Version: 2, Name: "created_at", SQL: "-- +goose Up\nALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();"},
}

type bundle struct {
	ctx     context.Context
	store   *catalog.Store
	svc     *provision.Service
	shard   *localpg.Cluster
	product string
	cfg     provision.Config
	worker  *worker
}

type options struct {
	shard    *localpg.Cluster // default: the package's shared cluster
	warmPool int
	cfg      provision.Config
	product  string // default: a unique name
}

// setup makes a control database with region r1, one shard on a real
// cluster and a product with a unique name (so that tests sharing the
// cluster do not share templates), and starts a worker.
func setup(t *testing.T, o options) bundle {
	t.Helper()
	ctx := testkit.Context(t, 3*time.Minute)
	pool, _ := testkit.MigratedDatabase(t, "control", migrateControl)
	store := catalog.New(pool)
	shard := o.shard
	if shard == nil {
		shard = testkit.SharedCluster(t)
	}
	product := o.product
	if product == "" {
		product = "p" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	}
	must(t, err1(store.CreateRegion(ctx, catalog.Region{Name: "r1"})))
	must(t, err1(store.CreateShard(ctx, catalog.Shard{Name: "s1", Region: "r1", DSN: shard.DSN("postgres"), Capacity: 1000})))
	_, _, err := store.RegisterProduct(ctx, catalog.RegisterProductParams{
		Name: product, Migrations: testMigrations, Default: true, WarmPoolSize: &o.warmPool,
	})
	must(t, err)

	cfg := o.cfg
	cfg.Store, cfg.Pools = store, fleet.NewPools()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 200 * time.Millisecond
	}
	if cfg.RefillInterval == 0 {
		cfg.RefillInterval = 200 * time.Millisecond
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = 200 * time.Millisecond
	}
	t.Cleanup(cfg.Pools.Close)
	w := &worker{pool: pool, cfg: cfg}
	b := bundle{ctx: ctx, store: store, shard: shard, product: product, cfg: cfg, worker: w}
	b.startWorker(t)
	t.Cleanup(func() { _ = b.stopWorker() })
	b.svc = provision.NewService(w.client, cfg)
	return b
}

// worker is the bundle's River worker, which a test may stop (as if its
// process died) and start again.
type worker struct {
	pool   *pgxpool.Pool
	cfg    provision.Config
	client *river.Client[pgx.Tx]
}

func (b bundle) startWorker(t *testing.T) {
	t.Helper()
	client, err := provision.NewWorker(b.worker.pool, b.worker.cfg)
	must(t, err)
	must(t, client.Start(b.ctx))
	b.worker.client = client
}

// stopWorker stops the worker, cancelling the jobs it runs.
func (b bundle) stopWorker() error {
	if b.worker.client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := b.worker.client.StopAndCancel(ctx)
	b.worker.client = nil
	return err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func err1[T any](_ T, err error) error { return err }

func (b bundle) create(t *testing.T, slug string) (catalog.Tenant, catalog.Operation) {
	t.Helper()
	tn, op, err := b.svc.CreateTenant(b.ctx, b.store, provision.CreateRequest{
		CreateTenantParams: catalog.CreateTenantParams{Slug: slug}, Actor: "test",
	})
	must(t, err)
	return tn, op
}

func (b bundle) act(t *testing.T, slug string, action catalog.Action, reason string) (catalog.Tenant, *catalog.Operation) {
	t.Helper()
	tn, op, err := b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: slug, Action: action, Reason: reason, Actor: "test"})
	must(t, err)
	return tn, op
}

// waitOperation waits until an operation finishes and returns it.
func (b bundle) waitOperation(t *testing.T, id uuid.UUID) catalog.Operation {
	t.Helper()
	var op catalog.Operation
	testkit.Eventually(t, 2*time.Minute, "operation "+id.String(), func() (bool, error) {
		var err error
		op, err = b.store.GetOperation(b.ctx, id)
		return err == nil && op.State != catalog.OperationRunning, err
	})
	return op
}

func (b bundle) tenant(t *testing.T, ref string) catalog.Tenant {
	t.Helper()
	tn, err := b.store.GetTenant(b.ctx, ref)
	must(t, err)
	return tn
}

// shardDatabases lists the tenant databases present on the shard.
func (b bundle) shardDatabases(t *testing.T) []string {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shard.DSN("postgres"))
	must(t, err)
	defer conn.Close(b.ctx)
	rows, err := conn.Query(b.ctx, `SELECT datname FROM pg_database WHERE datname LIKE 't\_%' ORDER BY 1`)
	must(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	return names
}

// assertNoOrphans checks that the shard holds exactly the databases the
// catalog says are warm, assigned or replaced (use with a shard of the
// test's own).
func (b bundle) assertNoOrphans(t *testing.T) {
	t.Helper()
	rows, err := b.store.Pool().Query(b.ctx, `SELECT name FROM tenant_databases WHERE state IN ('warm', 'assigned', 'replaced') ORDER BY 1`)
	must(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	testkit.Eventually(t, time.Minute, "shard databases to match the catalog", func() (bool, error) {
		got := b.shardDatabases(t)
		return slices.Equal(got, want), fmt.Errorf("shard has %v, catalog has %v", got, want)
	})
}

// identity waits until a tenant database carries a tenant's identity (it
// is stamped right after the tenant is activated) and returns it.
func (b bundle) identity(t *testing.T, db string) (tenantID *uuid.UUID, version int64) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shard.DSN(db))
	must(t, err)
	defer conn.Close(b.ctx)
	testkit.Eventually(t, time.Minute, "the identity of "+db+" to be stamped", func() (bool, error) {
		err := conn.QueryRow(b.ctx, `SELECT tenant_id, schema_version FROM plinth.identity`).Scan(&tenantID, &version)
		return err == nil && tenantID != nil, err
	})
	return tenantID, version
}

func TestProvisionCold(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})

	tn, op := b.create(t, "acme")
	if got := b.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("operation = %+v", got)
	}
	tn = b.tenant(t, tn.ID.String())
	if tn.State != catalog.StateActive {
		t.Fatalf("tenant state = %s (%s)", tn.State, tn.StateReason)
	}
	inst := tn.Installations[0]
	if inst.State != catalog.InstallationReady || inst.Shard != "s1" || inst.SchemaVersion != 2 {
		t.Fatalf("installation = %+v", inst)
	}
	if inst.Database != catalog.DatabaseName(*inst.DatabaseID) || strings.Contains(inst.Database, "acme") {
		t.Fatalf("database name %q is not derived from its ID", inst.Database)
	}
	id, version := b.identity(t, inst.Database)
	if id == nil || *id != tn.ID || version != 2 {
		t.Fatalf("identity = %v v%d, want %s v2", id, version, tn.ID)
	}
	// The product's migrations ran: the table and the column of version 2.
	conn, err := pgx.Connect(b.ctx, b.shard.DSN(inst.Database))
	must(t, err)
	defer conn.Close(b.ctx)
	_, err = conn.Exec(b.ctx, `INSERT INTO public.notes (body) VALUES ('hello') RETURNING created_at`)
	must(t, err)

	audit, err := b.store.ListAudit(b.ctx, "tenant", tn.ID.String(), 10)
	must(t, err)
	if len(audit) != 2 || audit[0].Action != "tenant.create" || audit[1].Action != "tenant.provisioned" {
		t.Fatalf("audit = %+v", audit)
	}
}

func TestProvisionFromWarmPool(t *testing.T) {
	t.Parallel()
	b := setup(t, options{warmPool: 2})

	pools := func() catalog.WarmPool {
		ps, err := b.store.ListWarmPools(b.ctx)
		must(t, err)
		return ps[slices.IndexFunc(ps, func(p catalog.WarmPool) bool { return p.Product == b.product })]
	}
	testkit.Eventually(t, time.Minute, "warm pool to fill", func() (bool, error) { return pools().Ready == 2, nil })
	warm := b.shardDatabases(t)

	tn, op := b.create(t, "acme")
	b.waitOperation(t, op.ID)
	tn = b.tenant(t, tn.ID.String())
	if tn.State != catalog.StateActive || !slices.Contains(warm, tn.Installations[0].Database) {
		t.Fatalf("tenant %s got %s, want one of the warm databases %v", tn.State, tn.Installations[0].Database, warm)
	}
	if id, _ := b.identity(t, tn.Installations[0].Database); id == nil || *id != tn.ID {
		t.Fatalf("claimed warm database carries identity %v, want %s", id, tn.ID)
	}
	testkit.Eventually(t, time.Minute, "warm pool to refill", func() (bool, error) { return pools().Ready == 2, nil })
}

func TestLifecycleToPurge(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	tn, op := b.create(t, "acme")
	b.waitOperation(t, op.ID)
	db := b.tenant(t, "acme").Installations[0].Database

	b.act(t, "acme", catalog.ActionSuspend, "unpaid")
	b.act(t, "acme", catalog.ActionResume, "")
	b.act(t, "acme", catalog.ActionDeactivate, "")
	del, _ := b.act(t, "acme", catalog.ActionDelete, "customer left")
	if del.State != catalog.StateDeleted || del.PurgeAfter == nil {
		t.Fatalf("deleted tenant = %+v", del)
	}
	und, _ := b.act(t, "acme", catalog.ActionUndelete, "")
	if und.State != catalog.StateDeactivated {
		t.Fatalf("undelete went to %s, want deactivated (the state before delete)", und.State)
	}
	b.act(t, "acme", catalog.ActionDelete, "customer left")

	_, _, err := b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: "acme", Action: catalog.ActionPurge, Actor: "test"})
	if !catalog.IsCode(err, "reason_required") {
		t.Fatalf("purge without a reason: %v", err)
	}
	_, purgeOp := b.act(t, "acme", catalog.ActionPurge, "GDPR request 42")
	if got := b.waitOperation(t, purgeOp.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("purge operation = %+v", got)
	}
	purged := b.tenant(t, tn.ID.String())
	if purged.State != catalog.StatePurged || purged.Installations[0].State != catalog.InstallationPurged {
		t.Fatalf("purged tenant = %+v", purged)
	}
	if slices.Contains(b.shardDatabases(t), db) {
		t.Fatalf("database %s still exists after purge", db)
	}
	if _, err := b.store.GetTenant(b.ctx, "acme"); !catalog.IsCode(err, "tenant_not_found") {
		t.Fatalf("a purged tenant is still found by slug: %v", err)
	}
	// The slug is free again.
	_, op = b.create(t, "acme")
	b.waitOperation(t, op.ID)

	audit, err := b.store.ListAudit(b.ctx, "tenant", tn.ID.String(), 100)
	must(t, err)
	var actions []string
	for _, a := range audit {
		actions = append(actions, strings.TrimPrefix(a.Action, "tenant."))
	}
	want := []string{"create", "provisioned", "suspend", "resume", "deactivate", "delete", "undelete", "delete", "purge_requested", "purge"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit = %v\nwant    %v", actions, want)
	}
}

// A shard that is down while a tenant is provisioned: the job retries with
// backoff, then fails the tenant with a clear reason; once the shard is back,
// `retry` provisions it, and nothing is left orphaned.
func TestShardDownDuringProvisioning(t *testing.T) {
	t.Parallel()
	shard := testkit.NewCluster(t)
	b := setup(t, options{shard: shard, cfg: provision.Config{
		MaxAttempts: 3, RetryBase: 50 * time.Millisecond, UnhealthyAfter: 1,
	}})
	// Build the template while the shard is up, then stop it.
	_, op := b.create(t, "first")
	b.waitOperation(t, op.ID)
	must(t, shard.Stop(b.ctx))

	tn, op := b.create(t, "acme")
	got := b.waitOperation(t, op.ID)
	tn = b.tenant(t, tn.ID.String())
	if got.State != catalog.OperationFailed || tn.State != catalog.StateFailed {
		t.Fatalf("operation %s, tenant %s; want both failed", got.State, tn.State)
	}
	if !strings.Contains(tn.StateReason, "s1") && !strings.Contains(tn.StateReason, "shard") {
		t.Fatalf("failure reason does not say what failed: %q", tn.StateReason)
	}

	_, err := shard.Start(b.ctx)
	must(t, err)
	testkit.Eventually(t, time.Minute, "shard to be healthy again", func() (bool, error) {
		sh, err := b.store.GetShard(b.ctx, "s1")
		return err == nil && sh.Health == catalog.ShardHealthy, err
	})
	_, retryOp := b.act(t, "acme", catalog.ActionRetry, "")
	if got := b.waitOperation(t, retryOp.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("retry operation = %+v", got)
	}
	if tn = b.tenant(t, "acme"); tn.State != catalog.StateActive {
		t.Fatalf("after retry tenant is %s", tn.State)
	}
	b.assertNoOrphans(t)
}

func TestExpiredTenantsArePurged(t *testing.T) {
	t.Parallel()
	b := setup(t, options{cfg: provision.Config{Retention: time.Millisecond}})
	tn, op := b.create(t, "acme")
	b.waitOperation(t, op.ID)
	b.act(t, "acme", catalog.ActionDelete, "trial ended")

	testkit.Eventually(t, time.Minute, "expired tenant to be purged", func() (bool, error) {
		got, err := b.store.GetTenantByID(b.ctx, tn.ID)
		return err == nil && got.State == catalog.StatePurged, err
	})
	audit, err := b.store.ListAudit(b.ctx, "tenant", tn.ID.String(), 100)
	must(t, err)
	last := audit[len(audit)-1]
	if last.Actor != provision.ActorPurger || last.Reason != "retention period ended" {
		t.Fatalf("last audit = %+v", last)
	}
}

func TestIllegalActions(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	_, op := b.create(t, "acme")
	b.waitOperation(t, op.ID)

	tests := []struct {
		action catalog.Action
		code   string
	}{
		{catalog.ActionResume, "illegal_transition"},
		{catalog.ActionUndelete, "illegal_transition"},
		{catalog.ActionPurge, "illegal_transition"},
		{catalog.ActionRetry, "illegal_transition"},
	}
	for _, tt := range tests {
		_, _, err := b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: "acme", Action: tt.action, Reason: "x", Actor: "test"})
		if !catalog.IsCode(err, tt.code) {
			t.Errorf("%s: %v, want %s", tt.action, err, tt.code)
		}
	}
	if _, _, err := b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: "nobody", Action: catalog.ActionSuspend, Actor: "test"}); !catalog.IsCode(err, "tenant_not_found") {
		t.Errorf("unknown tenant: %v", err)
	}
	if tn := b.tenant(t, "acme"); tn.State != catalog.StateActive {
		t.Fatalf("refused actions changed the tenant to %s", tn.State)
	}
}

// A purge that drops one database and then fails (its other shard is down)
// leaves a tenant that must not come back to life: undelete is refused.
func TestUndeleteRefusedAfterPartialPurge(t *testing.T) {
	t.Parallel()
	second := testkit.NewCluster(t)
	b := setup(t, options{cfg: provision.Config{MaxAttempts: 2, RetryBase: 50 * time.Millisecond}})
	must(t, err1(b.store.CreateShard(b.ctx, catalog.Shard{Name: "s2", Region: "r1", DSN: second.DSN("postgres"), Capacity: 1000})))
	other := b.product + "_b"
	_, _, err := b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: other, Migrations: testMigrations})
	must(t, err)
	tn, op, err := b.svc.CreateTenant(b.ctx, b.store, provision.CreateRequest{
		CreateTenantParams: catalog.CreateTenantParams{Slug: "acme", Products: []string{b.product, other}}, Actor: "test",
	})
	must(t, err)
	b.waitOperation(t, op.ID)
	tn = b.tenant(t, tn.ID.String())
	shards := map[string]bool{}
	for _, in := range tn.Installations {
		shards[in.Shard] = true
	}
	if len(shards) != 2 {
		t.Fatalf("the two databases are not on two shards: %+v", tn.Installations)
	}

	b.act(t, "acme", catalog.ActionDelete, "leaving")
	must(t, second.Stop(b.ctx))
	_, purge := b.act(t, "acme", catalog.ActionPurge, "erasure request")
	if got := b.waitOperation(t, purge.ID); got.State != catalog.OperationFailed {
		t.Fatalf("purge with a shard down: %+v", got)
	}
	_, _, err = b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: "acme", Action: catalog.ActionUndelete, Actor: "test"})
	if !catalog.IsCode(err, "purge_incomplete") {
		t.Fatalf("undelete after a partial purge: %v", err)
	}
	// Once the shard is back, purging again finishes the job.
	_, err = second.Start(b.ctx)
	must(t, err)
	testkit.Eventually(t, time.Minute, "the second shard to be healthy", func() (bool, error) {
		sh, err := b.store.GetShard(b.ctx, "s2")
		return err == nil && sh.Health == catalog.ShardHealthy, err
	})
	_, purge = b.act(t, "acme", catalog.ActionPurge, "erasure request, again")
	if got := b.waitOperation(t, purge.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("second purge: %+v", got)
	}
}

// The sweeper prunes change-log rows older than ChangeRetention and records
// how far, so a feed reader resuming from before that reloads.
func TestChangeLogIsPruned(t *testing.T) {
	t.Parallel()
	b := setup(t, options{cfg: provision.Config{ChangeRetention: time.Millisecond}})
	b.create(t, "prune-me")
	latest, err := b.store.LatestVersion(b.ctx)
	must(t, err)
	if latest == 0 {
		t.Fatal("creating a tenant wrote no change-log row")
	}
	testkit.Eventually(t, time.Minute, "the change log pruned through the tenant's creation", func() (bool, error) {
		pruned, err := b.store.PrunedThrough(b.ctx)
		return err == nil && pruned >= latest, fmt.Errorf("pruned through %d, latest %d: %v", pruned, latest, err)
	})
	changes, err := b.store.Changes(b.ctx, 0, 1000)
	must(t, err)
	for _, c := range changes {
		if c.Version <= latest {
			t.Fatalf("change %d survived pruning through %d", c.Version, latest)
		}
	}
}
