package provision_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// The control database is lost: a fresh one, with the same region, shard
// and products registered, gets its tenants, installations and warm
// databases back from the identity rows on the shard. A tenant whose
// databases conflict (two claim one installation, a product the catalog
// does not know) is reported and left alone until the operator fixes it;
// a dry run writes nothing; a second run recreates nothing; a database
// claiming an installation the catalog has elsewhere is reported, not
// recorded.
func TestRebuildCatalogFromShards(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 4*time.Minute)
	pg := testkit.NewCluster(t) // its own: the test changes the shard behind the catalog's back

	// The old control plane: four tenants, one of them with a second
	// product, and a warm database.
	old := setup(t, options{shard: pg, warmPool: 1})
	second := old.product + "_b"
	must(t, err3(old.store.RegisterProduct(old.ctx, catalog.RegisterProductParams{Name: second, Migrations: testMigrations[:1]})))
	acme, globex, initech := old.active(t, "acme"), old.active(t, "globex"), old.active(t, "initech")
	_, op, err := old.svc.CreateTenant(old.ctx, old.store, provision.CreateRequest{Actor: "test",
		CreateTenantParams: catalog.CreateTenantParams{Slug: "hooli", Products: []string{old.product, second}}})
	must(t, err)
	if got := old.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("provision hooli: %+v", got)
	}
	hooli := old.tenant(t, "hooli")
	for _, in := range hooli.Installations {
		old.identity(t, in.Database)
	}
	testkit.Eventually(t, time.Minute, "the warm pool to be full", func() (bool, error) {
		var warm, creating int
		err := old.store.Pool().QueryRow(old.ctx, `SELECT count(*) FILTER (WHERE state = 'warm'),
			count(*) FILTER (WHERE state = 'creating') FROM tenant_databases`).Scan(&warm, &creating)
		return warm == 1 && creating == 0, err
	})
	must(t, old.stopWorker())
	tenants := []catalog.Tenant{acme, globex, initech, hooli}
	for i := range tenants {
		tenants[i] = old.tenant(t, tenants[i].ID.String())
	}
	oldWarm := warmDatabases(t, old)
	if len(oldWarm) != 1 {
		t.Fatalf("warm databases: %v", oldWarm)
	}
	if rep, err := old.svc.VerifyCatalog(old.ctx, old.store); err != nil || len(rep.Findings) != 0 {
		t.Fatalf("the old catalog before it is lost: %+v, %v", rep, err)
	}

	// The shard gets a second database claiming initech's installation.
	admin, err := pgx.Connect(ctx, pg.DSN("postgres"))
	must(t, err)
	defer admin.Close(ctx)
	initechDB := initech.Installations[0].Database
	dup := copyDatabase(t, ctx, admin, pg, initechDB)

	// The new control plane knows the region, the shard and the first product.
	cur := setup(t, options{shard: pg, product: old.product})
	must(t, cur.stopWorker())
	rebuild := func(dryRun bool) provision.RebuildReport {
		t.Helper()
		rep, err := cur.svc.RebuildCatalog(cur.ctx, cur.store, provision.RebuildOptions{DryRun: dryRun, Actor: "test"})
		must(t, err)
		return rep
	}
	counts := func() string {
		t.Helper()
		var s string
		err := cur.store.Pool().QueryRow(cur.ctx, `SELECT format('%s tenants, %s installations, %s databases, %s audit records',
			(SELECT count(*) FROM tenants), (SELECT count(*) FROM installations),
			(SELECT count(*) FROM tenant_databases), (SELECT count(*) FROM audit_log))`).Scan(&s)
		must(t, err)
		return s
	}
	empty := counts()

	hooliDBs := map[string]string{}
	for _, in := range hooli.Installations {
		hooliDBs[in.Product] = in.Database
	}
	wantFindings := map[string]string{
		initechDB:             provision.FindingDuplicate,
		dup:                   provision.FindingDuplicate,
		hooliDBs[second]:      provision.FindingUnknownProduct,
		hooliDBs[old.product]: provision.FindingHeldBack,
	}
	wantFirst := []string{acme.Installations[0].Database, globex.Installations[0].Database, strings.Fields(oldWarm[0])[1]}
	for _, tc := range []struct {
		name   string
		dryRun bool
	}{{"dry run", true}, {"rebuild", false}} {
		rep := rebuild(tc.dryRun)
		checkFindings(t, tc.name, rep, wantFindings)
		if got := recreatedNames(rep); !slices.Equal(got, sorted(wantFirst)) {
			t.Errorf("%s recreated %v, want %v", tc.name, got, sorted(wantFirst))
		}
		if rep.Tenants != 2 || rep.DryRun != tc.dryRun || rep.Databases != 7 || rep.Unchanged != 0 {
			t.Errorf("%s: %+v", tc.name, rep)
		}
		if got := counts(); tc.dryRun && got != empty {
			t.Fatalf("the dry run wrote: %s, before %s", got, empty)
		}
	}

	// The operator drops the stray copy and registers the second product.
	_, err = admin.Exec(ctx, `DROP DATABASE `+dup+` WITH (FORCE)`)
	must(t, err)
	must(t, err3(cur.store.RegisterProduct(cur.ctx, catalog.RegisterProductParams{Name: second, Migrations: testMigrations[:1]})))
	rep := rebuild(false)
	checkFindings(t, "after the fix", rep, nil)
	if got, want := recreatedNames(rep), sorted([]string{initechDB, hooliDBs[old.product], hooliDBs[second]}); !slices.Equal(got, want) {
		t.Errorf("after the fix recreated %v, want %v", got, want)
	}
	if rep.Tenants != 2 || rep.Unchanged != 3 {
		t.Errorf("after the fix: %+v", rep)
	}

	// The catalog is what it was, but for slugs, tiers and the old tenants'
	// audit history.
	if v, err := cur.svc.VerifyCatalog(cur.ctx, cur.store); err != nil || len(v.Findings) != 0 {
		t.Fatalf("verify after the rebuild: %+v, %v", v, err)
	}
	for _, was := range tenants {
		now := cur.tenant(t, was.ID.String())
		if now.Slug != catalog.RecoveredSlug(was.ID) || now.State != catalog.StateActive || now.Region != was.Region {
			t.Errorf("%s came back as %+v", was.Slug, now)
		}
		if d := now.CreatedAt.Sub(was.CreatedAt); d < -5*time.Second || d > 5*time.Second {
			t.Errorf("%s was created at %s, now %s", was.Slug, was.CreatedAt, now.CreatedAt)
		}
		if got, want := installations(now), installations(was); got != want {
			t.Errorf("%s's installations:\n got  %s\n want %s", was.Slug, got, want)
		}
		audit, err := cur.store.ListAudit(cur.ctx, "tenant", was.ID.String(), 10)
		must(t, err)
		if len(audit) != 1 || audit[0].Action != "tenant.rebuilt" || audit[0].ToState != string(catalog.StateActive) {
			t.Errorf("%s's audit: %+v", was.Slug, audit)
		}
	}
	if got := warmDatabases(t, cur); fmt.Sprint(got) != fmt.Sprint(oldWarm) {
		t.Errorf("warm databases %v, want %v", got, oldWarm)
	}

	// A second run recreates nothing and writes nothing.
	before := counts()
	rep = rebuild(false)
	checkFindings(t, "second run", rep, nil)
	if len(rep.Recreated) != 0 || rep.Tenants != 0 || rep.Unchanged != 6 {
		t.Errorf("second run: %+v", rep)
	}
	if got := counts(); got != before {
		t.Errorf("the second run wrote: %s, before %s", got, before)
	}

	// A copy of acme's database claims acme's installation, which the
	// catalog has on acme's own database.
	stray := copyDatabase(t, ctx, admin, pg, acme.Installations[0].Database)
	rep = rebuild(false)
	checkFindings(t, "stray copy", rep, map[string]string{stray: provision.FindingElsewhere})
	if len(rep.Recreated) != 0 {
		t.Errorf("stray copy recreated %+v", rep.Recreated)
	}
	if got := counts(); got != before {
		t.Errorf("the stray copy changed the catalog: %s, before %s", got, before)
	}
	if got := cur.tenant(t, acme.ID.String()); got.Installations[0].Database != acme.Installations[0].Database {
		t.Errorf("acme now has %+v", got.Installations)
	}
}

func err3[A, B any](_ A, _ B, err error) error { return err }

// copyDatabase makes a copy of a tenant database under a name of its own,
// stamped with the matching database ID (its tenant and installation stay
// those of src), and returns its name.
func copyDatabase(t *testing.T, ctx context.Context, admin *pgx.Conn, pg *localpg.Cluster, src string) string {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	name := catalog.DatabaseName(id)
	testkit.Eventually(t, time.Minute, "a copy of "+src, func() (bool, error) {
		_, err := admin.Exec(ctx, `CREATE DATABASE `+name+` TEMPLATE `+src)
		return err == nil, err // its source may have a session a moment longer
	})
	conn, err := pgx.Connect(ctx, pg.DSN(name))
	must(t, err)
	_, err = conn.Exec(ctx, `UPDATE plinth.identity SET database_id = $1`, id)
	must(t, errors.Join(err, conn.Close(ctx)))
	return name
}

func checkFindings(t *testing.T, what string, rep provision.RebuildReport, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, f := range rep.Findings {
		got[f.Database] = f.Kind
	}
	if len(rep.Findings) != len(want) || len(got) != len(want) {
		t.Errorf("%s: findings %+v, want %v", what, rep.Findings, want)
		return
	}
	for db, kind := range want {
		if got[db] != kind {
			t.Errorf("%s: %s: %q, want %s (all: %+v)", what, db, got[db], kind, rep.Findings)
		}
	}
}

func recreatedNames(rep provision.RebuildReport) []string {
	var out []string
	for _, d := range rep.Recreated {
		out = append(out, d.Database)
	}
	return sorted(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// installations describes a tenant's installations and their databases.
func installations(t catalog.Tenant) string {
	var b strings.Builder
	for _, in := range t.Installations {
		fmt.Fprintf(&b, "[%s %s %s db=%v %s/%s v%d] ", in.ID, in.Product, in.State, in.DatabaseID, in.Shard, in.Database, in.SchemaVersion)
	}
	return b.String()
}

// warmDatabases lists the catalog's warm databases.
func warmDatabases(t *testing.T, b bundle) []string {
	t.Helper()
	rows, err := b.store.Pool().Query(b.ctx, `SELECT format('%s %s %s %s v%s', id, name, shard, product, schema_version)
		FROM tenant_databases WHERE state = 'warm' ORDER BY name`)
	must(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	return out
}
