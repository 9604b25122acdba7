package provision_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// backedUp is a bundle whose shard s1 archives its WAL into a repository
// and has a full backup.
func backedUp(t *testing.T) (bundle, *backup.PgBackRest) {
	t.Helper()
	return backedUpWith(t, provision.Config{}, false)
}

// backedUpWith is backedUp with more of the provisioning configuration;
// scheduled hands the repository to the backup scheduler too (tests that
// take backups themselves would find it busy).
func backedUpWith(t *testing.T, cfg provision.Config, scheduled bool) (bundle, *backup.PgBackRest) {
	t.Helper()
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testkit.Unavailable(t, "pgbackrest is not installed (apt install pgbackrest)")
	}
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	ctx := testkit.Context(t, 5*time.Minute)
	cred, err := localpg.OSUser()
	must(t, err)
	dir := testkit.Dir(t)
	port, err := localpg.FreePort()
	must(t, err)
	pg := &localpg.Cluster{Dir: dir + "/pg", Port: port, Password: localpg.RandomPassword(), SocketDir: dir + "/s"}
	br, err := backup.New(backup.Config{Home: dir + "/br", Repo: dir + "/repo", CipherPass: "restore-test-key-0123456789abcdefgh", Cred: cred},
		backup.Stanza{Name: "s1", DataDir: pg.DataDir(), Port: port, SocketDir: pg.SocketDir, User: localpg.Superuser, Password: pg.Password})
	must(t, err)
	pg.Settings = br.ArchiveSettings("s1")
	// Above the default: the scratch server must match it to replay.
	pg.Settings["max_connections"] = "150"
	must(t, pg.Init(ctx))
	_, err = pg.Start(ctx)
	must(t, err)
	t.Cleanup(func() { _ = pg.Stop(context.Background()) })
	must(t, br.Create(ctx, "s1"))
	cfg.Restorer, cfg.ScratchDir = br, dir+"/scratch"
	if scheduled {
		cfg.Backups = br
	}
	cfg.RetryBase, cfg.JobTimeout, cfg.RescueAfter = 100*time.Millisecond, 20*time.Second, 30*time.Second
	b := setup(t, options{shard: pg, cfg: cfg})
	return b, br
}

func (b bundle) active(t *testing.T, slug string) catalog.Tenant {
	t.Helper()
	_, op := b.create(t, slug)
	if got := b.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("provision %s: %+v", slug, got)
	}
	tn := b.tenant(t, slug)
	b.identity(t, tn.Installations[0].Database)
	return tn
}

func (b bundle) notes(t *testing.T, db string) string {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.shard.DSN(db))
	must(t, err)
	defer conn.Close(b.ctx)
	rows, err := conn.Query(b.ctx, `SELECT body FROM notes ORDER BY id`)
	must(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	return strings.Join(got, ",")
}

func (b bundle) now(t *testing.T) time.Time {
	t.Helper()
	var now time.Time
	must(t, b.store.Pool().QueryRow(b.ctx, `SELECT clock_timestamp()`).Scan(&now))
	return now
}

func (b bundle) waitRestore(t *testing.T, id uuid.UUID) catalog.Restore {
	t.Helper()
	var r catalog.Restore
	testkit.Eventually(t, 3*time.Minute, "the restore to finish", func() (bool, error) {
		var err error
		r, err = b.store.GetRestore(b.ctx, id)
		return err == nil && r.State != catalog.RestoreRunning, fmt.Errorf("%+v %v", r, err)
	})
	return r
}

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	ce, ok := catalog.AsError(err)
	if !ok || ce.Code != code {
		t.Errorf("%s: %v, want error %s", what, err, code)
	}
}

// A tenant's database comes back as it was at a moment between two writes:
// what was committed before is there, what came after is not. Another
// tenant on the same shard is untouched. The tenant keeps its ID, the
// database it had is kept (and refuses connections), and the swap can be
// undone.
func TestRestoreATenantToAPointInTime(t *testing.T) {
	t.Parallel()
	b, br := backedUp(t)
	acme, globex := b.active(t, "acme"), b.active(t, "globex")
	acmeDB, globexDB := acme.Installations[0].Database, globex.Installations[0].Database
	for _, db := range []string{acmeDB, globexDB} {
		b.exec(t, db, `INSERT INTO notes (body) VALUES ('in the backup')`)
	}
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond) // backup stop times are whole seconds

	// Before any backup ended: refused, nothing recorded.
	_, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: ptr(acme.CreatedAt.Add(time.Millisecond)), Actor: "test"})
	wantCode(t, "a target before the first backup", err, "no_backup_before_target")

	b.exec(t, acmeDB, `INSERT INTO notes (body) VALUES ('before the target')`)
	target := b.now(t)
	time.Sleep(100 * time.Millisecond)
	b.exec(t, acmeDB, `INSERT INTO notes (body) VALUES ('after the target'); DROP TABLE IF EXISTS nothing`)
	b.exec(t, globexDB, `INSERT INTO notes (body) VALUES ('globex after the target')`)

	for _, tt := range []struct {
		name string
		p    catalog.CreateRestoreParams
		code string
	}{
		{"a time in the future", catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: ptr(time.Now().Add(time.Hour))}, "target_in_future"},
		{"beyond retention", catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: ptr(time.Now().AddDate(0, -2, 0))}, "target_beyond_retention"},
		{"an unknown tenant", catalog.CreateRestoreParams{Tenants: []string{"acme", "initech"}, Target: &target}, "tenant_not_found"},
		{"an unknown product", catalog.CreateRestoreParams{Tenants: []string{"acme"}, Product: "nope", Target: &target}, "installation_not_found"},
		{"before the tenant existed", catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: ptr(acme.CreatedAt.Add(-time.Minute))}, "target_before_tenant"},
		{"no tenant", catalog.CreateRestoreParams{Target: &target}, "invalid_tenants"},
		{"an undo with nothing to undo", catalog.CreateRestoreParams{Tenants: []string{"acme"}}, "nothing_to_undo"},
	} {
		tt.p.Actor = "test"
		_, err := b.svc.StartRestore(b.ctx, b.store, tt.p)
		wantCode(t, tt.name, err, tt.code)
	}
	var n int
	must(t, b.store.Pool().QueryRow(b.ctx, `SELECT count(*) FROM restores`).Scan(&n))
	if n != 0 {
		t.Fatalf("refused requests recorded %d restores", n)
	}

	r, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: &target, Actor: "test"})
	must(t, err)
	_, err = b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{acme.ID.String()}, Target: &target, Actor: "test"})
	wantCode(t, "a second restore while one runs", err, "restore_running")

	r = b.waitRestore(t, r.ID)
	if r.State != catalog.RestoreSucceeded || len(r.Items) != 1 {
		t.Fatalf("restore = %+v", r)
	}
	it := r.Items[0]
	t.Logf("restore %s: scratch restore %d ms, replay %d ms, copy %d ms, swap %d ms", it.Tenant, *it.RestoreMS, *it.ReplayMS, *it.CopyMS, *it.SwapMS)
	after := b.tenant(t, "acme")
	if after.ID != acme.ID || after.State != catalog.StateActive {
		t.Fatalf("tenant after the restore: %+v", after)
	}
	newDB := after.Installations[0].Database
	if newDB == acmeDB || newDB != it.RestoredDatabase {
		t.Fatalf("the installation uses %s; the restore made %s (it had %s)", newDB, it.RestoredDatabase, acmeDB)
	}
	if got := b.notes(t, newDB); got != "in the backup,before the target" {
		t.Fatalf("restored acme holds %q, want the rows before the target only", got)
	}
	if got := b.notes(t, globexDB); got != "in the backup,globex after the target" {
		t.Fatalf("globex changed: %q", got)
	}
	if id, _ := b.identity(t, newDB); *id != acme.ID {
		t.Fatalf("the restored database carries tenant %s", id)
	}
	old, err := b.store.GetDatabase(b.ctx, *acme.Installations[0].DatabaseID)
	must(t, err)
	if old.State != catalog.DatabaseReplaced {
		t.Fatalf("the replaced database is %s", old.State)
	}
	if conn, err := pgx.Connect(b.ctx, b.shard.DSN(acmeDB)); err == nil {
		conn.Close(b.ctx)
		t.Fatal("the replaced database still takes connections")
	}

	// Undo: the database it had comes back, with everything written to it.
	u, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, Actor: "test"})
	must(t, err)
	if u = b.waitRestore(t, u.ID); u.State != catalog.RestoreSucceeded {
		t.Fatalf("undo = %+v", u)
	}
	if db := b.tenant(t, "acme").Installations[0].Database; db != acmeDB {
		t.Fatalf("after the undo acme uses %s, want %s", db, acmeDB)
	}
	if got := b.notes(t, acmeDB); got != "in the backup,before the target,after the target" {
		t.Fatalf("after the undo acme holds %q", got)
	}

	// Both tenants in one request: one scratch restore of the shard, and
	// each tenant's own database at the target.
	m, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme", "globex"}, Target: &target, Actor: "test"})
	must(t, err)
	if m = b.waitRestore(t, m.ID); m.State != catalog.RestoreSucceeded || len(m.Items) != 2 {
		t.Fatalf("restore of two tenants = %+v", m)
	}
	for slug, want := range map[string]string{"acme": "in the backup,before the target", "globex": "in the backup"} {
		if got := b.notes(t, b.tenant(t, slug).Installations[0].Database); got != want {
			t.Errorf("%s after the restore of both holds %q, want %q", slug, got, want)
		}
	}
}

// A restore whose worker dies while it runs resumes in the next worker
// from what the catalog recorded: the tenant ends restored exactly once,
// never half-swapped.
func TestRestoreResumesAfterTheWorkerDies(t *testing.T) {
	t.Parallel()
	b, br := backedUp(t)
	acme := b.active(t, "acme")
	db := acme.Installations[0].Database
	b.exec(t, db, `INSERT INTO notes (body) VALUES ('kept')`)
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond)
	target := b.now(t)
	b.exec(t, db, `INSERT INTO notes (body) VALUES ('lost')`)

	// Stop the worker as soon as the copy is recorded, mid-restore.
	must(t, b.stopWorker())
	r, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, Target: &target, Actor: "test"})
	must(t, err)
	b.startWorker(t)
	testkit.Eventually(t, 2*time.Minute, "the copy to be reserved", func() (bool, error) {
		r, err := b.store.GetRestore(b.ctx, r.ID)
		return err == nil && r.Items[0].RestoredDatabaseID != nil, errors.Join(err, errors.New("not yet"))
	})
	must(t, b.stopWorker())
	// Whatever step it died at, the tenant points at a database that exists.
	st := b.tenant(t, "acme")
	t.Logf("the worker died with the tenant %s on %s, the restore's item %s", st.State, st.Installations[0].Database, b.item(t, r.ID).State)
	if !slices.Contains(b.shardDatabases(t), st.Installations[0].Database) {
		t.Fatalf("the tenant points at %s, which does not exist", st.Installations[0].Database)
	}
	b.startWorker(t)
	r = b.waitRestore(t, r.ID)
	if r.State != catalog.RestoreSucceeded {
		t.Fatalf("restore = %+v", r)
	}
	tn := b.tenant(t, "acme")
	if tn.State != catalog.StateActive || b.notes(t, tn.Installations[0].Database) != "kept" {
		t.Fatalf("after the resumed restore: %s, %q", tn.State, b.notes(t, tn.Installations[0].Database))
	}
	b.assertNoOrphans(t)
}

func (b bundle) item(t *testing.T, id uuid.UUID) catalog.RestoreItem {
	t.Helper()
	r, err := b.store.GetRestore(b.ctx, id)
	must(t, err)
	return r.Items[0]
}

func ptr[T any](v T) *T { return &v }

// A script deletes two tenants by mistake and purges one of them: a
// restore of the tenants deleted in that window brings both back from the
// backups, to the state each had before it was deleted and with its data
// as at the target, keeping their IDs. A tenant deleted outside the window
// stays deleted.
func TestRestoreDeletedAndPurgedTenants(t *testing.T) {
	t.Parallel()
	b, br := backedUp(t)
	acme, globex, initech := b.active(t, "acme"), b.active(t, "globex"), b.active(t, "initech")
	for _, tn := range []catalog.Tenant{acme, globex, initech} {
		b.exec(t, tn.Installations[0].Database, `INSERT INTO notes (body) VALUES ('in the backup')`)
	}
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond) // backup stop times are whole seconds
	b.act(t, "initech", catalog.ActionDelete, "left long ago")
	b.act(t, "globex", catalog.ActionSuspend, "unpaid")
	target := b.now(t)
	time.Sleep(100 * time.Millisecond)
	b.exec(t, acme.Installations[0].Database, `INSERT INTO notes (body) VALUES ('after the target')`)

	from := b.now(t)
	b.act(t, "acme", catalog.ActionDelete, "cleanup script")
	b.act(t, "globex", catalog.ActionDelete, "cleanup script")
	_, op := b.act(t, "globex", catalog.ActionPurge, "cleanup script")
	if got := b.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("purge = %+v", got)
	}
	until := b.now(t)

	for _, tt := range []struct {
		name string
		p    catalog.CreateRestoreParams
		code string
	}{
		{"an undo of a deleted tenant", catalog.CreateRestoreParams{Tenants: []string{"acme"}}, "tenant_not_restorable"},
		{"a purged tenant to after its purge", catalog.CreateRestoreParams{Tenants: []string{globex.ID.String()}, Target: ptr(b.now(t))}, "target_after_purge"},
		{"a purged tenant by its slug", catalog.CreateRestoreParams{Tenants: []string{"globex"}, Target: &target}, "tenant_not_found"},
		{"one product of a purged tenant", catalog.CreateRestoreParams{Tenants: []string{globex.ID.String()}, Product: "notes", Target: &target}, "invalid_product"},
		{"a window to before its tenants existed", catalog.CreateRestoreParams{DeletedBetween: &[2]time.Time{from, until}, Target: ptr(acme.CreatedAt.Add(-time.Minute))}, "no_deleted_tenants"},
		{"an empty window", catalog.CreateRestoreParams{DeletedBetween: &[2]time.Time{until, until.Add(time.Second)}, Target: &target}, "no_deleted_tenants"},
		{"a window backwards", catalog.CreateRestoreParams{DeletedBetween: &[2]time.Time{until, from}, Target: &target}, "invalid_deleted_between"},
		{"a window and tenants", catalog.CreateRestoreParams{Tenants: []string{"acme"}, DeletedBetween: &[2]time.Time{from, until}, Target: &target}, "invalid_tenants"},
	} {
		tt.p.Actor = "test"
		_, err := b.svc.StartRestore(b.ctx, b.store, tt.p)
		wantCode(t, tt.name, err, tt.code)
	}

	r, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{DeletedBetween: &[2]time.Time{from, until}, Target: &target, Actor: "test"})
	must(t, err)
	if len(r.Items) != 2 {
		t.Fatalf("the window named %d installations, want acme's and globex's: %+v", len(r.Items), r.Items)
	}
	// A purge asked for while the restore runs is refused (it would drop
	// what the restore brings back).
	_, _, err = b.svc.Act(b.ctx, b.store, provision.ActRequest{Tenant: "acme", Action: catalog.ActionPurge, Reason: "again", Actor: "test"})
	wantCode(t, "a purge during the restore", err, "restore_running")
	if r = b.waitRestore(t, r.ID); r.State != catalog.RestoreSucceeded {
		t.Fatalf("restore = %+v", r)
	}
	for _, tt := range []struct {
		was   catalog.Tenant
		state catalog.TenantState
		notes string
	}{
		{acme, catalog.StateActive, "in the backup"},
		{globex, catalog.StateSuspended, "in the backup"},
	} {
		got := b.tenant(t, tt.was.ID.String())
		if got.Slug != tt.was.Slug || got.State != tt.state || got.DeletedAt != nil || got.PurgedAt != nil {
			t.Errorf("%s after the restore: %+v, want %s and no deletion", tt.was.Slug, got, tt.state)
			continue
		}
		in := got.Installations[0]
		if in.State != catalog.InstallationReady || in.Database == tt.was.Installations[0].Database {
			t.Errorf("%s's installation after the restore: %+v", tt.was.Slug, in)
			continue
		}
		if n := b.notes(t, in.Database); n != tt.notes {
			t.Errorf("%s holds %q, want %q", tt.was.Slug, n, tt.notes)
		}
		if id, _ := b.identity(t, in.Database); *id != tt.was.ID {
			t.Errorf("%s's restored database carries tenant %s", tt.was.Slug, id)
		}
	}
	if got := b.tenant(t, "initech"); got.State != catalog.StateDeleted {
		t.Errorf("initech, deleted before the window, is %s", got.State)
	}
	// The purged tenant's dropped database stays dropped; the deleted one's
	// is kept as replaced, like any restore's.
	for _, tt := range []struct {
		was  catalog.Tenant
		want catalog.DatabaseState
	}{{acme, catalog.DatabaseReplaced}, {globex, catalog.DatabaseDropped}} {
		d, err := b.store.GetDatabase(b.ctx, *tt.was.Installations[0].DatabaseID)
		must(t, err)
		if d.State != tt.want {
			t.Errorf("%s's database from before is %s, want %s", tt.was.Slug, d.State, tt.want)
		}
	}
	// The purged one answers by its slug again.
	if _, err := b.store.GetTenant(b.ctx, "globex"); err != nil {
		t.Errorf("globex by slug after the restore: %v", err)
	}
}

// A restore with As goes into a new tenant: it holds the data as at the
// target, under its own ID and installation, while the tenant restored
// from keeps its database, its later rows and its state. A slug already
// taken is refused with nothing recorded.
func TestRestoreIntoANewTenant(t *testing.T) {
	t.Parallel()
	b, br := backedUp(t)
	acme := b.active(t, "acme")
	b.active(t, "globex")
	acmeDB := acme.Installations[0].Database
	b.exec(t, acmeDB, `INSERT INTO notes (body) VALUES ('in the backup')`)
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond) // backup stop times are whole seconds
	target := b.now(t)
	time.Sleep(100 * time.Millisecond)
	b.exec(t, acmeDB, `INSERT INTO notes (body) VALUES ('after the target')`)

	for _, tt := range []struct {
		name string
		p    catalog.CreateRestoreParams
		code string
	}{
		{"a slug taken", catalog.CreateRestoreParams{Tenants: []string{"acme"}, As: "globex", Target: &target}, "slug_taken"},
		{"an invalid slug", catalog.CreateRestoreParams{Tenants: []string{"acme"}, As: "Not A Slug", Target: &target}, "invalid_slug"},
		{"two tenants", catalog.CreateRestoreParams{Tenants: []string{"acme", "globex"}, As: "acme-old", Target: &target}, "invalid_as"},
		{"an undo", catalog.CreateRestoreParams{Tenants: []string{"acme"}, As: "acme-old"}, "invalid_as"},
	} {
		tt.p.Actor = "test"
		_, err := b.svc.StartRestore(b.ctx, b.store, tt.p)
		wantCode(t, tt.name, err, tt.code)
	}
	// A shard its provider backs up is not restored from Plinth's backups.
	_, err := b.store.Pool().Exec(b.ctx, `UPDATE shards SET backups = 'provider'`)
	must(t, err)
	_, err = b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, As: "acme-old", Target: &target, Actor: "test"})
	wantCode(t, "a shard backed up by its provider", err, "shard_backed_up_by_provider")
	_, err = b.store.Pool().Exec(b.ctx, `UPDATE shards SET backups = 'plinth'`)
	must(t, err)
	if _, err := b.store.GetTenant(b.ctx, "acme-old"); !catalog.IsCode(err, "tenant_not_found") {
		t.Fatalf("a refused restore left a tenant behind: %v", err)
	}

	r, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{"acme"}, As: "acme-old", Target: &target, Actor: "test"})
	must(t, err)
	if r.AsTenant != "acme-old" || r.AsTenantID == nil || len(r.Items) != 1 || r.Items[0].AsInstallationID == nil {
		t.Fatalf("restore as = %+v", r)
	}
	if r = b.waitRestore(t, r.ID); r.State != catalog.RestoreSucceeded {
		t.Fatalf("restore = %+v", r)
	}
	old := b.tenant(t, "acme-old")
	if old.ID == acme.ID || old.ID != *r.AsTenantID || old.State != catalog.StateActive || old.Region != acme.Region || old.Tier != acme.Tier {
		t.Fatalf("the new tenant: %+v", old)
	}
	in := old.Installations[0]
	if in.State != catalog.InstallationReady || in.ID != *r.Items[0].AsInstallationID || in.Database != r.Items[0].RestoredDatabase {
		t.Fatalf("the new tenant's installation: %+v (restore item %+v)", in, r.Items[0])
	}
	if got := b.notes(t, in.Database); got != "in the backup" {
		t.Fatalf("the new tenant holds %q, want the rows before the target", got)
	}
	id, _ := b.identity(t, in.Database)
	if *id != old.ID {
		t.Fatalf("the new tenant's database carries tenant %s", id)
	}
	now := b.tenant(t, "acme")
	if now.State != catalog.StateActive || now.Installations[0].Database != acmeDB {
		t.Fatalf("acme changed: %+v", now)
	}
	if got := b.notes(t, acmeDB); got != "in the backup,after the target" {
		t.Fatalf("acme holds %q", got)
	}
	// The copy is the new tenant's alone: acme, purged and restored from
	// the backups, comes back on a database of its own and acme-old keeps
	// its database.
	b.act(t, "acme", catalog.ActionDelete, "gone")
	_, op := b.act(t, "acme", catalog.ActionPurge, "gone")
	if got := b.waitOperation(t, op.ID); got.State != catalog.OperationSucceeded {
		t.Fatalf("purge = %+v", got)
	}
	back, err := b.svc.StartRestore(b.ctx, b.store, catalog.CreateRestoreParams{Tenants: []string{acme.ID.String()}, Target: &target, Actor: "test"})
	must(t, err)
	if back.Items[0].CurrentDatabase != acmeDB {
		t.Fatalf("the purged acme's database is taken to be %s, want %s (acme-old's is %s)", back.Items[0].CurrentDatabase, acmeDB, in.Database)
	}
	if back = b.waitRestore(t, back.ID); back.State != catalog.RestoreSucceeded {
		t.Fatalf("restore of the purged acme = %+v", back)
	}
	if db := b.tenant(t, "acme").Installations[0].Database; db == in.Database || b.notes(t, db) != "in the backup" {
		t.Fatalf("acme after its restore is on %s holding %q", db, b.notes(t, db))
	}
	if got := b.tenant(t, "acme-old"); got.State != catalog.StateActive || got.Installations[0].Database != in.Database {
		t.Fatalf("acme-old after acme's restore: %+v", got)
	}
	b.act(t, "acme-old", catalog.ActionDelete, "looked at it")
}
