package catalog_test

import (
	"testing"
	"time"

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
