package provision_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// The catalog and its shard agree until someone changes a shard behind
// Plinth's back: a dropped database, a stray one, a database whose
// identity names another tenant are each reported, and nothing else.
func TestVerifyCatalogFindsWhatChangedBehindItsBack(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 3*time.Minute)
	pg := testkit.NewCluster(t) // its own: the test changes the shard behind the catalog's back
	b := setup(t, options{shard: pg, warmPool: 1})
	acme, globex, initech := b.active(t, "acme"), b.active(t, "globex"), b.active(t, "initech")

	rep, err := b.svc.VerifyCatalog(b.ctx, b.store)
	must(t, err)
	if len(rep.Findings) != 0 || rep.Shards != 1 || rep.Databases < 3 {
		t.Fatalf("a sound catalog: %+v", rep)
	}

	admin, err := pgx.Connect(ctx, pg.DSN("postgres"))
	must(t, err)
	defer admin.Close(ctx)
	acmeDB := acme.Installations[0].Database
	stray := "t_" + uuid.NewString()[:8] + "0123456789abcdef0123456789ab"[:24]
	for _, sql := range []string{
		`DROP DATABASE ` + acmeDB + ` WITH (FORCE)`,
		`CREATE DATABASE ` + stray,
	} {
		_, err := admin.Exec(ctx, sql)
		must(t, err)
	}
	// globex's database now claims to be initech's.
	conn, err := pgx.Connect(ctx, pg.DSN(globex.Installations[0].Database))
	must(t, err)
	_, err = conn.Exec(ctx, `UPDATE plinth.identity SET tenant_id = $1`, initech.ID)
	must(t, errors.Join(err, conn.Close(ctx)))

	rep, err = b.svc.VerifyCatalog(b.ctx, b.store)
	must(t, err)
	got := map[string]string{}
	for _, f := range rep.Findings {
		got[f.Database] = f.Kind
	}
	want := map[string]string{acmeDB: provision.FindingMissing, stray: provision.FindingOrphan,
		globex.Installations[0].Database: provision.FindingIdentity}
	if len(got) != len(want) || len(rep.Findings) != len(want) {
		t.Fatalf("findings %+v, want %v", rep.Findings, want)
	}
	for db, kind := range want {
		if got[db] != kind {
			t.Errorf("%s: %q, want %s (all: %+v)", db, got[db], kind, rep.Findings)
		}
	}
}
