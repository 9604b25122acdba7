package tenantdb_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/tenantdb"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

var migrations = []catalog.Migration{
	{Version: 1, Name: "a", SQL: "-- +goose Up\nCREATE TABLE a (id int);"},
	{Version: 2, Name: "b", SQL: "-- +goose Up\nCREATE TABLE b (id int);"},
}

func setup(t *testing.T) (context.Context, *tenantdb.Shard, string) {
	t.Helper()
	ctx := testkit.Context(t, 2*time.Minute)
	c := testkit.SharedCluster(t)
	pool := testkit.Pool(t, c.DSN("postgres"))
	product := "p" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	return ctx, tenantdb.NewShard("s1", pool), product
}

func load() ([]catalog.Migration, error) { return migrations, nil }

// A build that crashed halfway left a *_build database behind: the next
// build throws it away and makes a complete template.
func TestEnsureTemplateRecoversFromAnInterruptedBuild(t *testing.T) {
	t.Parallel()
	ctx, shard, product := setup(t)
	name := tenantdb.TemplateName(product, 2)
	if _, err := shard.Admin.Exec(ctx, "CREATE DATABASE "+name+"_build"); err != nil {
		t.Fatal(err)
	}
	loads := 0
	got, err := shard.EnsureTemplate(ctx, product, 2, func() ([]catalog.Migration, error) { loads++; return load() })
	if err != nil || got != name || loads != 1 {
		t.Fatalf("EnsureTemplate = %q, %v after %d loads", got, err, loads)
	}
	if ok, _ := shard.Exists(ctx, name+"_build"); ok {
		t.Fatal("the interrupted build is still there")
	}
	// Known now: no second build, no migrations loaded.
	if _, err := shard.EnsureTemplate(ctx, product, 2, func() ([]catalog.Migration, error) { loads++; return load() }); err != nil || loads != 1 {
		t.Fatalf("second EnsureTemplate: %v after %d loads", err, loads)
	}
	// Migrations that do not reach the version are refused.
	if _, err := shard.EnsureTemplate(ctx, product, 3, load); err == nil {
		t.Fatal("built version 3 from migrations that end at 2")
	}
}

func TestCreateStampAndRefuseForeignIdentity(t *testing.T) {
	t.Parallel()
	ctx, shard, product := setup(t)
	tpl, err := shard.EnsureTemplate(ctx, product, 2, load)
	if err != nil {
		t.Fatal(err)
	}
	dbID, tenant, inst := uuid.New(), uuid.New(), uuid.New()
	name := catalog.DatabaseName(dbID)
	for range 2 { // creating twice is fine: the second finds it there
		if err := shard.Create(ctx, name, tpl); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = shard.Drop(context.Background(), name) })
	for range 2 { // stamping twice with the same identity is fine
		if err := shard.Stamp(ctx, name, dbID, &tenant, &inst); err != nil {
			t.Fatal(err)
		}
	}
	id, err := shard.ReadIdentity(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if *id.DatabaseID != dbID || *id.TenantID != tenant || *id.InstallationID != inst || id.Product != product || id.SchemaVersion != 2 {
		t.Fatalf("identity = %+v", id)
	}
	other := uuid.New()
	if err := shard.Stamp(ctx, name, dbID, &other, &inst); !errors.Is(err, tenantdb.ErrIdentityMismatch) {
		t.Fatalf("stamping another tenant into it: %v", err)
	}
	if err := shard.Stamp(ctx, name, uuid.New(), &tenant, &inst); !errors.Is(err, tenantdb.ErrIdentityMismatch) {
		t.Fatalf("stamping another database ID into it: %v", err)
	}
	if err := shard.Drop(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, _ := shard.Exists(ctx, name); ok {
		t.Fatal("dropped database still exists")
	}
}

// Migrate brings a database forward and is safe to repeat.
func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx, shard, product := setup(t)
	tpl, err := shard.EnsureTemplate(ctx, product, 1, func() ([]catalog.Migration, error) { return migrations[:1], nil })
	if err != nil {
		t.Fatal(err)
	}
	name := catalog.DatabaseName(uuid.New())
	if err := shard.Create(ctx, name, tpl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shard.Drop(context.Background(), name) })
	for range 2 {
		if err := shard.Migrate(ctx, name, migrations, 2); err != nil {
			t.Fatal(err)
		}
	}
	id, err := shard.ReadIdentity(ctx, name)
	if err != nil || id.SchemaVersion != 2 {
		t.Fatalf("after migrating: %+v, %v", id, err)
	}
	conn, err := shard.Connect(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO public.b VALUES (1)"); err != nil {
		t.Fatalf("migration 2 did not run: %v", err)
	}
	// Product tables land in public, never in Plinth's schema, even though
	// the role is named plinth (and "$user" would resolve to it).
	var inPlinth int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'plinth' AND tablename IN ('a', 'b')`).Scan(&inPlinth); err != nil || inPlinth != 0 {
		t.Fatalf("%d product tables in the plinth schema (%v)", inPlinth, err)
	}
}

// Builders waiting for a template's lock must not starve the shard's small
// admin pool, which the build itself and health probes need (a review found
// this deadlocking with four waiters on a four-connection pool).
func TestConcurrentTemplateBuildsDoNotStarveThePool(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 2*time.Minute)
	c := testkit.SharedCluster(t)
	cfg, err := pgxpool.ParseConfig(c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	shard := tenantdb.NewShard("s1", pool)
	product := "p" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	if _, err := pool.Exec(ctx, "CREATE DATABASE "+tenantdb.TemplateName(product, 2)+"_build"); err != nil {
		t.Fatal(err) // a build a crash left behind
	}
	errs := make(chan error, 6)
	for range 6 {
		go func() {
			_, err := shard.EnsureTemplate(ctx, product, 2, load)
			errs <- err
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
