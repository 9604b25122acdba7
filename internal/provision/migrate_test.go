package provision_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// v3 adds a constraint that one tenant's data (seeded) violates.
var v3 = catalog.Migration{Version: 3, Name: "non_empty", SQL: "-- +goose Up\nALTER TABLE notes ADD CONSTRAINT notes_body_non_empty CHECK (body <> '');"}

// fleet provisions n tenants (their tiers 0..3 in turn) and returns them
// with their databases.
func (b bundle) fleet(t *testing.T, prefix string, n int) (tenants []catalog.Tenant) {
	t.Helper()
	for i := range n {
		tn, op, err := b.svc.CreateTenant(b.ctx, b.store, provision.CreateRequest{
			CreateTenantParams: catalog.CreateTenantParams{Slug: fmt.Sprintf("%s-%d", prefix, i), Tier: i % 4}, Actor: "test"})
		must(t, err)
		if got := b.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
			t.Fatalf("provision %d: %+v", i, got)
		}
		tenants = append(tenants, b.tenant(t, tn.ID.String()))
	}
	return tenants
}

func (b bundle) registerV3(t *testing.T) {
	t.Helper()
	_, _, err := b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: b.product, Migrations: append(testMigrations[:2:2], v3)})
	must(t, err)
}

func (b bundle) exec(t *testing.T, db, sql string) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shard.DSN(db))
	must(t, err)
	defer conn.Close(b.ctx)
	_, err = conn.Exec(b.ctx, sql)
	must(t, err)
}

// appliedTimes counts how often version v was applied to db (goose's table).
func (b bundle) appliedTimes(t *testing.T, db string, v int64) int {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shard.DSN(db))
	must(t, err)
	defer conn.Close(b.ctx)
	var n int
	must(t, conn.QueryRow(b.ctx, `SELECT count(*) FROM plinth.goose_db_version WHERE version_id = $1 AND is_applied`, v).Scan(&n))
	return n
}

func (b bundle) waitRun(t *testing.T, id uuid.UUID) catalog.MigrationRun {
	t.Helper()
	var run catalog.MigrationRun
	testkit.Eventually(t, 2*time.Minute, "the migration run to end", func() (bool, error) {
		var err error
		run, err = b.store.GetMigrationRun(b.ctx, id)
		return err == nil && run.FinishedAt != nil, fmt.Errorf("%+v %v", run, err)
	})
	return run
}

// A run migrates every tenant database, canary first; the one whose data
// the migration rejects is recorded and skipped, not a stop for the fleet;
// new tenants start at the new version.
func TestFleetMigration(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	tenants := b.fleet(t, "mig", 6)
	bad := tenants[2]
	b.exec(t, bad.Installations[0].Database, `INSERT INTO notes (body) VALUES ('')`)
	b.registerV3(t)

	run, err := b.svc.StartMigration(b.ctx, b.store, catalog.CreateRunParams{Product: b.product, Concurrency: 2, Canary: 1,
		MaxFailureRatio: 0.5, Actor: "test"})
	must(t, err)
	if run.TargetVersion != 3 || run.Total != 6 || run.Tasks["pending"] != 6 {
		t.Fatalf("the new run: %+v", run)
	}
	// A second run of the product while one is active is refused.
	if _, err := b.svc.StartMigration(b.ctx, b.store, catalog.CreateRunParams{Product: b.product, Concurrency: 1}); !catalog.IsCode(err, "migration_in_progress") {
		t.Fatalf("a second run: %v", err)
	}
	run = b.waitRun(t, run.ID)
	if run.State != catalog.RunFinishedWithFailures || run.Tasks["done"] != 5 || run.Tasks["failed"] != 1 {
		t.Fatalf("the finished run: %+v", run)
	}
	failed, err := b.store.MigrationTasks(b.ctx, run.ID, "failed", 10)
	must(t, err)
	if len(failed) != 1 || failed[0].TenantID != bad.ID || failed[0].Error == "" {
		t.Fatalf("failed tasks: %+v", failed)
	}
	tasks, err := b.store.MigrationTasks(b.ctx, run.ID, "", 10)
	must(t, err)
	if tasks[0].Wave != 0 || tasks[1].Wave == 0 {
		t.Fatalf("waves: %+v (one canary first)", tasks)
	}
	for _, tn := range tenants {
		got := b.tenant(t, tn.ID.String()).Installations[0]
		want := int64(3)
		if tn.ID == bad.ID {
			want = 2
		}
		if got.SchemaVersion != want || b.appliedTimes(t, got.Database, 3) != int(want-2) {
			t.Errorf("%s: schema version %d (v3 applied %d times), want %d", tn.Slug, got.SchemaVersion, b.appliedTimes(t, got.Database, 3), want)
		}
	}
	// New tenants are made at the new version.
	fresh := b.fleet(t, "new", 1)[0]
	if v := fresh.Installations[0].SchemaVersion; v != 3 {
		t.Fatalf("a tenant created after the run is at version %d", v)
	}
	// Bad requests change nothing.
	for _, p := range []catalog.CreateRunParams{
		{Product: b.product, Concurrency: 0},
		{Product: b.product, Concurrency: 1, To: 9},
		{Product: b.product, Concurrency: 1, MaxFailureRatio: 2},
		{Product: "nosuch", Concurrency: 1},
	} {
		if _, err := b.svc.StartMigration(b.ctx, b.store, p); err == nil {
			t.Errorf("StartMigration(%+v) succeeded", p)
		}
	}
	runs, err := b.store.ListMigrationRuns(b.ctx, b.product)
	must(t, err)
	if len(runs) != 1 {
		t.Fatalf("%d runs after refused requests", len(runs))
	}
}

// A worker that died mid-run left tasks running, one with its migration
// applied but not recorded: resuming finishes every tenant at the target,
// none migrated twice. A failing canary stops the run.
func TestFleetMigrationResumesAndStops(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	tenants := b.fleet(t, "mig", 4)
	b.registerV3(t)

	// As a killed worker would leave it: the run recorded, the first task
	// claimed and its DDL committed in its database, but not recorded.
	run, err := b.store.CreateMigrationRun(b.ctx, catalog.CreateRunParams{Product: b.product, Concurrency: 2, MaxFailureRatio: 1, Actor: "test"})
	must(t, err)
	claimed, err := b.store.ClaimMigrationTasks(b.ctx, run.ID, 2)
	must(t, err)
	if len(claimed) != 1 { // four tiers: four waves of one
		t.Fatalf("claimed %d: %+v", len(claimed), claimed)
	}
	if more, err := b.store.ClaimMigrationTasks(b.ctx, run.ID, 2); err != nil || len(more) != 0 {
		t.Fatalf("a later wave started while the first is running: %+v %v", more, err)
	}
	sh, err := b.store.GetShard(b.ctx, claimed[0].Shard)
	must(t, err)
	conn, err := b.cfg.Pools.Shard(sh)
	must(t, err)
	ms, err := b.store.Migrations(b.ctx, b.product, 3)
	must(t, err)
	must(t, conn.Migrate(b.ctx, claimed[0].Database, ms, 3))

	run, err = b.svc.ResumeMigration(b.ctx, b.store, run.ID)
	must(t, err)
	run = b.waitRun(t, run.ID)
	if run.State != catalog.RunSucceeded || run.Tasks["done"] != 4 {
		t.Fatalf("the resumed run: %+v", run)
	}
	for _, tn := range tenants {
		db := b.tenant(t, tn.ID.String()).Installations[0].Database
		if n := b.appliedTimes(t, db, 3); n != 1 {
			t.Errorf("%s: v3 applied %d times", tn.Slug, n)
		}
	}

	// v4 fails on the canary (seeded): the run stops, the rest is skipped.
	v4 := catalog.Migration{Version: 4, Name: "positive", SQL: "-- +goose Up\nALTER TABLE notes ADD CONSTRAINT notes_id_small CHECK (id < 1000);"}
	_, _, err = b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: b.product, Migrations: append(testMigrations[:2:2], v3, v4)})
	must(t, err)
	for _, tn := range tenants {
		if tn.Tier == 3 { // the canary: the least critical tenant
			b.exec(t, tn.Installations[0].Database, `INSERT INTO notes (id, body) VALUES (5000, 'big')`)
		}
	}
	run, err = b.svc.StartMigration(b.ctx, b.store, catalog.CreateRunParams{Product: b.product, Concurrency: 2, Canary: 1, MaxFailureRatio: 1, Actor: "test"})
	must(t, err)
	run = b.waitRun(t, run.ID)
	if run.State != catalog.RunStopped || run.Tasks["failed"] != 1 || run.Tasks["skipped"] != 3 {
		t.Fatalf("a run whose canary failed: %+v", run)
	}
}

// Pause stops a run between batches; resume finishes it.
func TestFleetMigrationPause(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	b.fleet(t, "mig", 3)
	b.registerV3(t)
	run, err := b.store.CreateMigrationRun(b.ctx, catalog.CreateRunParams{Product: b.product, Concurrency: 1, MaxFailureRatio: 1, Actor: "test"})
	must(t, err)
	paused, err := b.svc.PauseMigration(b.ctx, b.store, run.ID, "test")
	must(t, err)
	if paused.State != catalog.RunPaused {
		t.Fatalf("paused: %+v", paused)
	}
	if _, err := b.svc.PauseMigration(b.ctx, b.store, run.ID, "test"); !catalog.IsCode(err, "illegal_transition") {
		t.Fatalf("pausing twice: %v", err)
	}
	if r, _ := b.store.GetMigrationRun(b.ctx, run.ID); r.Tasks["done"] != 0 {
		t.Fatalf("a paused run progressed: %+v", r)
	}
	_, err = b.svc.ResumeMigration(b.ctx, b.store, run.ID)
	must(t, err)
	if run = b.waitRun(t, run.ID); run.State != catalog.RunSucceeded || run.Tasks["done"] != 3 {
		t.Fatalf("after resume: %+v", run)
	}
	if _, err := b.svc.ResumeMigration(b.ctx, b.store, run.ID); !catalog.IsCode(err, "illegal_transition") {
		t.Fatalf("resuming a finished run: %v", err)
	}
}
