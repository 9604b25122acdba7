package provision_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/tenantdb"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func (b bundle) waitDrill(t *testing.T, id uuid.UUID) catalog.Drill {
	t.Helper()
	var d catalog.Drill
	testkit.Eventually(t, 3*time.Minute, "the drill to finish", func() (bool, error) {
		var err error
		d, err = b.store.GetDrill(b.ctx, id)
		return err == nil && d.State != catalog.DrillRunning, fmt.Errorf("%+v %v", d, err)
	})
	return d
}

// The scheduled drill runs by itself once there are tenants: it restores
// them and the shard's heartbeat into scratch and finds each identity and a
// heartbeat within the RPO of its target. With the heartbeat stopped, a
// drill fails on it and says why.
func TestDrillRestoresASampleAndTheHeartbeat(t *testing.T) {
	t.Parallel()
	const rpo = 3 * time.Second
	b, br := backedUpWith(t, provision.Config{HeartbeatInterval: 300 * time.Millisecond,
		DrillDueInterval: 300 * time.Millisecond, DrillInterval: time.Hour, DrillRPO: rpo}, false)
	beatCtx, stopBeats := context.WithCancel(b.ctx)
	beating := make(chan struct{})
	go func() { defer close(beating); provision.Heartbeats(beatCtx, b.cfg) }()
	t.Cleanup(func() { stopBeats(); <-beating })
	testkit.Eventually(t, time.Minute, "the shard's heartbeat", func() (bool, error) {
		conn, err := pgx.Connect(b.ctx, b.shard.DSN(tenantdb.HeartbeatDatabase))
		if err != nil {
			return false, err
		}
		defer conn.Close(b.ctx)
		at, err := tenantdb.ReadHeartbeat(b.ctx, conn)
		return err == nil && time.Since(at) < 5*time.Second, err
	})
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond) // backup stop times are whole seconds
	if ds, err := b.store.ListDrills(b.ctx, 10); err != nil || len(ds) != 0 {
		t.Fatalf("a drill started with no tenant to drill: %+v %v", ds, err)
	}

	acme, globex := b.active(t, "acme"), b.active(t, "globex")
	var scheduled catalog.Drill
	testkit.Eventually(t, time.Minute, "the scheduled drill to start", func() (bool, error) {
		ds, err := b.store.ListDrills(b.ctx, 10)
		if err != nil || len(ds) == 0 {
			return false, err
		}
		scheduled = ds[0]
		return true, nil
	})
	// It may start as soon as acme is active, before globex is.
	d := b.waitDrill(t, scheduled.ID)
	if d.State != catalog.DrillSucceeded || d.Actor != provision.ActorDriller || !drilled(d, acme) {
		t.Fatalf("the scheduled drill: %+v", d)
	}
	checkResults(t, d, rpo)

	// A sample of one takes the tenant drilled least recently: globex, if
	// the scheduled drill did not have it.
	next := globex
	if drilled(d, globex) {
		next = acme
	}
	manual, err := b.svc.StartDrill(b.ctx, b.store, ptr(1), "test")
	must(t, err)
	_, err = b.svc.StartDrill(b.ctx, b.store, ptr(1), "test")
	wantCode(t, "a second drill while one runs", err, "drill_running")
	_, err = b.svc.StartDrill(b.ctx, b.store, ptr(0), "test")
	wantCode(t, "a sample of zero", err, "invalid_sample")
	d = b.waitDrill(t, manual.ID)
	if d.State != catalog.DrillSucceeded || len(d.Results) != 2 || !drilled(d, next) {
		t.Fatalf("the manual drill of one tenant, want %s: %+v", next.Slug, d)
	}
	checkResults(t, d, rpo)
	if ds, _ := b.store.ListDrills(b.ctx, 10); len(ds) != 2 {
		t.Errorf("%d drills recorded, want the scheduled and the manual one", len(ds))
	}

	// Both were drilled just now: none is overdue in two weeks; with a
	// window of zero both are.
	tiers, overdue, err := b.store.DrillReport(b.ctx, provision.DrillOverdueDefault, 100)
	must(t, err)
	if len(tiers) != 1 || tiers[0].Tenants != 2 || tiers[0].Overdue != 0 || tiers[0].OldestSuccess == nil || len(overdue) != 0 {
		t.Errorf("report over two weeks: %+v %+v", tiers, overdue)
	}
	tiers, overdue, err = b.store.DrillReport(b.ctx, 0, 100)
	must(t, err)
	if len(tiers) != 1 || tiers[0].Overdue != 2 || len(overdue) != 2 {
		t.Errorf("report over no time: %+v %+v", tiers, overdue)
	}

	// No heartbeat for longer than the RPO: the drill fails, on the
	// heartbeat only.
	stopBeats()
	<-beating
	time.Sleep(rpo + time.Second)
	stale, err := b.svc.StartDrill(b.ctx, b.store, nil, "test")
	must(t, err)
	d = b.waitDrill(t, stale.ID)
	if d.State != catalog.DrillFailed || len(d.Results) != 3 {
		t.Fatalf("a drill with a stale heartbeat: %+v", d)
	}
	for _, r := range d.Results {
		if (r.TenantID == nil) == r.OK || r.TenantID == nil && !strings.Contains(r.Detail, "beyond the") {
			t.Errorf("with a stale heartbeat: %+v", r)
		}
	}
}

// drilled reports whether the drill checked the tenant's database.
func drilled(d catalog.Drill, tn catalog.Tenant) bool {
	for _, r := range d.Results {
		if r.TenantID != nil && *r.TenantID == tn.ID && r.Database == tn.Installations[0].Database && r.Tier != nil {
			return true
		}
	}
	return false
}

// checkResults checks that every result of a passed drill is for shard s1,
// and the heartbeat's within the RPO.
func checkResults(t *testing.T, d catalog.Drill, rpo time.Duration) {
	t.Helper()
	beat := false
	for _, r := range d.Results {
		if !r.OK || r.Shard != "s1" {
			t.Errorf("result %+v", r)
		}
		if r.TenantID == nil {
			beat = r.Database == tenantdb.HeartbeatDatabase && r.HeartbeatLagMS != nil &&
				*r.HeartbeatLagMS >= 0 && *r.HeartbeatLagMS <= rpo.Milliseconds()
		}
	}
	if !beat {
		t.Errorf("drill %s: no heartbeat within %s: %+v", d.ID, rpo, d.Results)
	}
}

// A drill whose worker died mid-way (its job left running, its lock free)
// is handed on by the sweeper and finishes, long before River's rescue
// after the drill's 30-minute timeout would run it again.
func TestOrphanedDrillIsHandedOn(t *testing.T) {
	t.Parallel()
	b, br := backedUpWith(t, provision.Config{SweepInterval: 300 * time.Millisecond, DrillDueInterval: time.Hour,
		HeartbeatInterval: 300 * time.Millisecond}, false)
	beatCtx, stopBeats := context.WithCancel(b.ctx)
	beating := make(chan struct{})
	go func() { defer close(beating); provision.Heartbeats(beatCtx, b.cfg) }()
	t.Cleanup(func() { stopBeats(); <-beating })
	acme := b.active(t, "acme")
	testkit.Eventually(t, time.Minute, "the shard's heartbeat database", func() (bool, error) {
		conn, err := pgx.Connect(b.ctx, b.shard.DSN(tenantdb.HeartbeatDatabase))
		if err == nil {
			conn.Close(b.ctx)
		}
		return err == nil, err
	})
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	time.Sleep(1500 * time.Millisecond) // backup stop times are whole seconds

	must(t, b.stopWorker())
	d, err := b.svc.StartDrill(b.ctx, b.store, ptr(1), "test")
	must(t, err)
	// As if a worker had taken the job a minute ago and died.
	tag, err := b.store.Pool().Exec(b.ctx, `UPDATE river_job SET state = 'running', attempt = 1,
		attempted_at = now() - interval '1 minute', attempted_by = ARRAY['dead-worker'] WHERE kind = $1 AND args ->> 'drill_id' = $2`, provision.DrillArgs{}.Kind(), d.ID.String())
	must(t, err)
	if tag.RowsAffected() != 1 {
		t.Fatalf("%d drill jobs, want 1", tag.RowsAffected())
	}
	b.startWorker(t)
	if d = b.waitDrill(t, d.ID); d.State != catalog.DrillSucceeded || !drilled(d, acme) {
		t.Fatalf("the handed-on drill: %+v", d)
	}
}
