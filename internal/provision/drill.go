package provision

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Drill defaults.
const (
	// ActorDriller is recorded for the drills Plinth schedules itself.
	ActorDriller             = "system:driller"
	HeartbeatIntervalDefault = 2 * time.Second
	DrillIntervalDefault     = 7 * 24 * time.Hour
	DrillSampleDefault       = 10
	// DrillRPODefault is the recovery point a drill holds the backups to:
	// the heartbeat restored must be at most this much older than the
	// target (WAL is archived at least every 5 s).
	DrillRPODefault = 10 * time.Second
	// DrillOverdueDefault is how long a tenant may go without a successful
	// drill before the report names it.
	DrillOverdueDefault = 14 * 24 * time.Hour
)

// Heartbeats stamps the heartbeat database of every shard each
// HeartbeatInterval, over one connection per shard, until ctx ends. A shard
// that fails is logged and tried again on the next beat.
func Heartbeats(ctx context.Context, cfg Config) {
	cfg = cfg.withDefaults()
	beats := map[string]*tenantdb.Heartbeat{}
	defer func() {
		for _, h := range beats {
			h.Close()
		}
	}()
	failing := map[string]bool{}
	tick := time.NewTicker(cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		shards, err := cfg.Store.ListShards(ctx, "")
		if err != nil && ctx.Err() == nil {
			cfg.Logger.Warn("heartbeat: list shards", "error", err)
		}
		for _, sh := range shards {
			h, ok := beats[sh.Name]
			if !ok {
				s, err := cfg.Pools.Shard(sh)
				if err != nil {
					continue
				}
				h = s.NewHeartbeat()
				beats[sh.Name] = h
			}
			err := h.Stamp(ctx)
			if err != nil && !failing[sh.Name] && ctx.Err() == nil {
				cfg.Logger.Warn("heartbeat failed", "shard", sh.Name, "error", err)
			}
			failing[sh.Name] = err != nil
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// DrillArgs is the durable job of a drill. Its results are upserted per
// database, so a drill whose worker died runs again from the start and
// ends with one result per database.
type DrillArgs struct {
	DrillID uuid.UUID `json:"drill_id"`
}

// Kind implements river.JobArgs.
func (DrillArgs) Kind() string { return "plinth.drill" }

var drillOpts = &river.InsertOpts{MaxAttempts: 3}

// DrillDueArgs is the periodic job that starts a drill when none was
// started within DrillInterval: a schedule that survives restarts, which a
// weekly timer in a process would not.
type DrillDueArgs struct{}

// Kind implements river.JobArgs.
func (DrillDueArgs) Kind() string { return "plinth.drill_due" }

// StartDrill records a drill of sample tenants (nil: all) to the present
// moment and queues its job, in one transaction.
func (s *Service) StartDrill(ctx context.Context, st *catalog.Store, sample *int, actor string) (catalog.Drill, error) {
	if s.cfg.Restorer == nil {
		return catalog.Drill{}, catalog.NotFound("backups_not_configured",
			"this control plane runs no backups, so there is nothing to drill (plinth dev sets them up when pgbackrest is installed)")
	}
	return startDrill(ctx, st, s.river, sample, actor)
}

func startDrill(ctx context.Context, st *catalog.Store, client *river.Client[pgx.Tx], sample *int, actor string) (catalog.Drill, error) {
	var d catalog.Drill
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		if d, err = tx.CreateDrill(ctx, sample, actor, time.Now()); err != nil {
			return err
		}
		_, err = client.InsertTx(ctx, tx.Tx(), DrillArgs{DrillID: d.ID}, drillOpts)
		return err
	})
	return d, err
}

type drillDueWorker struct {
	river.WorkerDefaults[DrillDueArgs]
	*workers
}

func (w *drillDueWorker) Work(ctx context.Context, _ *river.Job[DrillDueArgs]) error {
	if w.cfg.Restorer == nil {
		return nil
	}
	last, err := w.store.LastDrillCreated(ctx)
	if err != nil || time.Since(last) < w.cfg.DrillInterval {
		return err
	}
	// A fleet without a restorable tenant yet (a first start) waits: a
	// drill of nothing would only fail.
	one := 1
	if some, err := w.store.DrillSample(ctx, &one, time.Now()); err != nil || len(some) == 0 {
		return err
	}
	client := river.ClientFromContext[pgx.Tx](ctx)
	sample := w.cfg.DrillSample
	d, err := startDrill(ctx, w.store, client, &sample, ActorDriller)
	if e, ok := catalog.AsError(err); ok && e.Code == "drill_running" {
		return nil
	}
	if err == nil {
		w.log.Info("drill started", "drill", d.ID, "sample", sample)
	}
	return err
}

type drillWorker struct {
	river.WorkerDefaults[DrillArgs]
	*workers
}

// Timeout bounds one attempt. A drill whose worker died is handed on by
// the sweeper within a minute (its lock is free), not after this.
func (w *drillWorker) Timeout(*river.Job[DrillArgs]) time.Duration { return 30 * time.Minute }

// Work restores the drill's sample, one scratch server per shard with its
// heartbeat database, checks every copy and records the results.
func (w *drillWorker) Work(ctx context.Context, job *river.Job[DrillArgs]) error {
	unlock, err := w.lockRun(ctx, orphanDrills, job.Args.DrillID)
	if err != nil {
		return err
	}
	defer unlock()
	d, err := w.store.GetDrill(ctx, job.Args.DrillID)
	if err != nil || d.State != catalog.DrillRunning {
		return err
	}
	if w.cfg.Restorer == nil {
		_, err := w.store.FinishDrill(ctx, d.ID, "this worker runs no backups, so it cannot drill")
		return err
	}
	targets, err := w.store.DrillTargets(ctx, d)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		_, err := w.store.FinishDrill(ctx, d.ID, "no restorable tenant existed at the target time")
		return err
	}
	byShard := map[string][]catalog.DrillTarget{}
	var order []string
	for _, t := range targets {
		if _, ok := byShard[t.Shard]; !ok {
			order = append(order, t.Shard)
		}
		byShard[t.Shard] = append(byShard[t.Shard], t)
	}
	if err := all(0, order, func(shard string) error { return w.drillShard(ctx, d, shard, byShard[shard]) }); err != nil {
		return err
	}
	d, err = w.store.FinishDrill(ctx, d.ID, "")
	if err == nil {
		w.log.Info("drill finished", "drill", d.ID, "state", d.State, "results", len(d.Results))
	}
	return err
}

// drillShard restores the shard's sampled databases and its heartbeat
// into scratch and records a result for each. Only a failure to record is
// returned: a restore that fails is a failed result, which is what a drill
// is for.
func (w *drillWorker) drillShard(ctx context.Context, d catalog.Drill, shard string, targets []catalog.DrillTarget) error {
	dbs := []string{tenantdb.HeartbeatDatabase}
	for _, t := range targets {
		dbs = append(dbs, t.Database)
	}
	dir := filepath.Join(w.cfg.ScratchDir, "drill-"+d.ID.String()[:8]+"-"+shard)
	scratch, took, err := w.cfg.Restorer.Scratch(ctx, shard, dbs, d.TargetTime, dir)
	if err == nil {
		defer func() {
			if err := backup.DiscardScratch(context.WithoutCancel(ctx), dir); err != nil {
				w.log.Warn("discard drill scratch restore", "dir", dir, "error", err)
			}
		}()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	result := func(db string, t *catalog.DrillTarget, check error, lag *time.Duration) error {
		r := catalog.DrillResult{Shard: shard, Database: db, OK: check == nil,
			RestoreMS: took[0].Milliseconds(), ReplayMS: took[1].Milliseconds()}
		if check != nil {
			r.Detail = check.Error()
		}
		if t != nil {
			r.TenantID, r.Tier = &t.TenantID, &t.Tier
		}
		if lag != nil {
			ms := lag.Milliseconds()
			r.HeartbeatLagMS = &ms
		}
		return w.store.RecordDrillResult(ctx, d.ID, r)
	}
	if err != nil {
		err = fmt.Errorf("restore into scratch: %w", err)
		for _, db := range dbs[1:] {
			if rerr := result(db, lookup(targets, db), err, nil); rerr != nil {
				return rerr
			}
		}
		return result(tenantdb.HeartbeatDatabase, nil, err, nil)
	}
	lag, err := w.checkHeartbeat(ctx, scratch, d.TargetTime)
	if rerr := result(tenantdb.HeartbeatDatabase, nil, err, lag); rerr != nil {
		return rerr
	}
	for i := range targets {
		if err := result(targets[i].Database, &targets[i], checkIdentity(ctx, scratch, targets[i]), nil); err != nil {
			return err
		}
	}
	return nil
}

func lookup(targets []catalog.DrillTarget, db string) *catalog.DrillTarget {
	for i := range targets {
		if targets[i].Database == db {
			return &targets[i]
		}
	}
	return nil
}

// checkHeartbeat reads the heartbeat of the restored copy: it must be
// within the RPO before the target.
func (w *drillWorker) checkHeartbeat(ctx context.Context, scratch *localpg.Cluster, target time.Time) (*time.Duration, error) {
	conn, err := pgx.Connect(ctx, scratch.DSN(tenantdb.HeartbeatDatabase))
	if err != nil {
		return nil, fmt.Errorf("the heartbeat database was not restored: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	at, err := tenantdb.ReadHeartbeat(ctx, conn)
	if err != nil {
		return nil, err
	}
	lag := target.Sub(at)
	if lag > w.cfg.DrillRPO {
		return &lag, fmt.Errorf("the restored heartbeat is %s older than the target, beyond the %s RPO", lag.Round(time.Millisecond), w.cfg.DrillRPO)
	}
	return &lag, nil
}

// checkIdentity checks that the restored copy is the tenant's database of
// the product.
func checkIdentity(ctx context.Context, scratch *localpg.Cluster, t catalog.DrillTarget) error {
	conn, err := pgx.Connect(ctx, scratch.DSN(t.Database))
	if err != nil {
		return fmt.Errorf("the database was not restored: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id, err := tenantdb.IdentityOf(ctx, conn)
	if err != nil {
		return fmt.Errorf("read the restored identity: %w", err)
	}
	if id.TenantID == nil || *id.TenantID != t.TenantID || id.Product != t.Product {
		return fmt.Errorf("the restored database belongs to tenant %v, product %s: %w", id.TenantID, id.Product, tenantdb.ErrIdentityMismatch)
	}
	return nil
}
