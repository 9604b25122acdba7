package catalog_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// Every shard has a heartbeat database of the same name: a drill over two
// shards keeps one result for each, and a resumed drill replaces a result
// rather than adding one. A failed result fails the drill.
func TestDrillResultsPerShard(t *testing.T) {
	t.Parallel()
	b := setup(t)
	d, err := b.store.CreateDrill(b.ctx, nil, "test", time.Now())
	must(t, err)
	_, err = b.store.CreateDrill(b.ctx, nil, "test", time.Now())
	wantCode(t, err, "drill_running")
	lag := int64(400)
	for _, r := range []catalog.DrillResult{
		{Shard: "s1", Database: "plinth_heartbeat", OK: false, Detail: "first attempt", RestoreMS: 1, ReplayMS: 1},
		{Shard: "s1", Database: "plinth_heartbeat", OK: true, HeartbeatLagMS: &lag, RestoreMS: 2, ReplayMS: 2},
		{Shard: "s2", Database: "plinth_heartbeat", OK: false, Detail: "beyond the RPO", HeartbeatLagMS: &lag, RestoreMS: 3, ReplayMS: 3},
	} {
		must(t, b.store.RecordDrillResult(b.ctx, d.ID, r))
	}
	d, err = b.store.FinishDrill(b.ctx, d.ID, "")
	must(t, err)
	if d.State != catalog.DrillFailed || len(d.Results) != 2 || d.Results[0].Shard != "s1" || !d.Results[0].OK ||
		d.Results[1].Shard != "s2" || d.Results[1].OK || d.Results[1].Detail != "beyond the RPO" {
		t.Fatalf("drill %+v", d)
	}
	for _, sample := range []int{0, catalog.MaxDrillSample + 1} {
		_, err = b.store.CreateDrill(b.ctx, &sample, "test", time.Now())
		wantCode(t, err, "invalid_sample")
	}
	if ds, err := b.store.ListDrills(b.ctx, 10); err != nil || len(ds) != 1 {
		t.Fatalf("drills %+v %v, want the one", ds, err)
	}
}

// A shard its provider backs up is registered as such; Plinth neither
// samples its tenants for drills nor reports them overdue. A bad value
// is refused.
func TestDrillsLeaveProviderShardsOut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.store.CreateShard(b.ctx, catalog.Shard{Name: "bad", Region: "r1", DSN: "postgres://x@127.0.0.1:1/postgres", Capacity: 10, Backups: "nobody"})
	wantCode(t, err, "invalid_backups")
	rds, err := b.store.CreateShard(b.ctx, catalog.Shard{Name: "rds", Region: "r1", DSN: "postgres://x@127.0.0.1:1/postgres", Capacity: 10, Backups: catalog.BackupsByProvider})
	must(t, err)
	if s1, err := b.store.GetShard(b.ctx, "s1"); err != nil || s1.Backups != catalog.BackupsByPlinth || rds.Backups != catalog.BackupsByProvider {
		t.Fatalf("s1 backed up by %q (%v), rds by %q", s1.Backups, err, rds.Backups)
	}
	past := time.Now().Add(-time.Hour)
	for _, shard := range []string{"s1", "rds"} {
		id, db := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
		_, err := b.store.RecoverTenant(b.ctx, catalog.RecoverTenantParams{ID: id, Slug: "on-" + shard, Region: "r1", CreatedAt: past, Actor: "test",
			Databases: []catalog.RecoveredDatabase{{ID: db, Name: "t_" + strings.ReplaceAll(db.String(), "-", ""), Shard: shard, Product: "notes",
				CreatedAt: past, InstallationID: uuid.Must(uuid.NewV7()), InstallationCreatedAt: past, AssignedAt: &past}}})
		must(t, err)
	}
	got, err := b.store.DrillSample(b.ctx, nil, time.Now())
	must(t, err)
	if len(got) != 1 || got[0].Shard != "s1" {
		t.Fatalf("drill sample %+v, want on-s1's database only", got)
	}
	_, overdue, err := b.store.DrillReport(b.ctx, time.Minute, 10)
	must(t, err)
	if len(overdue) != 1 || overdue[0].Tenant != "on-s1" {
		t.Fatalf("overdue %+v, want on-s1 only", overdue)
	}
}

// A drill's sample is picked once: a drill resumed after its worker died
// checks the same tenants, not a new random draw.
func TestDrillTargetsAreKept(t *testing.T) {
	t.Parallel()
	b := setup(t)
	past := time.Now().Add(-time.Hour)
	for i := range 4 {
		db := uuid.Must(uuid.NewV7())
		_, err := b.store.RecoverTenant(b.ctx, catalog.RecoverTenantParams{ID: uuid.Must(uuid.NewV7()), Slug: fmt.Sprintf("drilled-%d", i), Region: "r1",
			CreatedAt: past, Actor: "test", Databases: []catalog.RecoveredDatabase{{ID: db, Name: "t_" + strings.ReplaceAll(db.String(), "-", ""),
				Shard: "s1", Product: "notes", CreatedAt: past, InstallationID: uuid.Must(uuid.NewV7()), InstallationCreatedAt: past, AssignedAt: &past}}})
		must(t, err)
	}
	one := 1
	d, err := b.store.CreateDrill(b.ctx, &one, "test", time.Now())
	must(t, err)
	first, err := b.store.DrillTargets(b.ctx, d)
	must(t, err)
	if len(first) != 1 {
		t.Fatalf("a sample of one: %+v", first)
	}
	for range 8 {
		again, err := b.store.DrillTargets(b.ctx, d)
		must(t, err)
		if len(again) != 1 || again[0].TenantID != first[0].TenantID {
			t.Fatalf("the resumed drill checks %+v, want %+v", again, first)
		}
	}
}
