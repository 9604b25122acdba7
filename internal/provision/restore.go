package provision

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"golang.org/x/sync/errgroup"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// ActorRestorer is recorded in the audit log for a restore's own steps.
const ActorRestorer = "system:restorer"

// Restorer brings databases of a shard back from its backups into a scratch
// server (backup.PgBackRest is one; a stanza is named after its shard).
type Restorer interface {
	// CheckTarget fails with backup.ErrNoBackupBefore when no backup of
	// the shard ended before target.
	CheckTarget(ctx context.Context, shard string, target time.Time) error
	// Scratch restores databases dbs as they were at target into a server
	// in dir, started, replayed and promoted, and says how long the
	// restore and the replay took.
	Scratch(ctx context.Context, shard string, dbs []string, target time.Time, dir string) (*localpg.Cluster, [2]time.Duration, error)
}

// RestoreArgs is the durable job of a restore. The restore's items in the
// catalog are its progress: a worker killed at any step resumes from them,
// and a tenant is swapped in one transaction or not at all.
type RestoreArgs struct {
	RestoreID uuid.UUID `json:"restore_id"`
}

// Kind implements river.JobArgs.
func (RestoreArgs) Kind() string { return "plinth.restore" }

var restoreOpts = &river.InsertOpts{
	MaxAttempts: 10,
	UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
		rivertype.JobStateScheduled, rivertype.JobStateRetryable,
	}},
}

// StartRestore checks a restore request, records it and queues its job in
// one transaction. A target time needs, on every shard involved, a backup
// that ended before it; that is checked first, outside the transaction, so
// that no tenant row stays locked while pgBackRest reads the repository.
func (s *Service) StartRestore(ctx context.Context, st *catalog.Store, p catalog.CreateRestoreParams) (catalog.Restore, error) {
	p.Retention = time.Duration(backup.RetentionDaysDefault) * 24 * time.Hour
	if err := st.ResolveRestoreTenants(ctx, &p); err != nil {
		return catalog.Restore{}, err
	}
	if p.Target != nil {
		if s.cfg.Restorer == nil {
			return catalog.Restore{}, catalog.NotFound("backups_not_configured",
				"this control plane runs no backups, so it cannot restore (plinth dev sets them up when pgbackrest is installed)")
		}
		if err := s.checkTarget(ctx, st, p); err != nil {
			return catalog.Restore{}, err
		}
	}
	var r catalog.Restore
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		if r, err = tx.CreateRestore(ctx, p); err != nil {
			return err
		}
		_, err = s.river.InsertTx(ctx, tx.Tx(), RestoreArgs{RestoreID: r.ID}, restoreOpts)
		return err
	})
	return r, err
}

// checkTarget checks each shard the tenants' databases are on. What
// CreateRestore refuses by itself (a target in the future or beyond
// retention, an unknown tenant, one created after the target) is left to
// it, so that it gives its own reason.
func (s *Service) checkTarget(ctx context.Context, st *catalog.Store, p catalog.CreateRestoreParams) error {
	if now := time.Now(); p.Target.After(now) || p.Target.Before(now.Add(-p.Retention)) {
		return nil
	}
	checked := map[string]bool{}
	for _, ref := range p.Tenants {
		t, err := st.GetTenant(ctx, ref)
		if err != nil || p.Target.Before(t.CreatedAt) {
			continue
		}
		for _, in := range t.Installations {
			if in.Shard == "" && in.State == catalog.InstallationPurged {
				if d, err := st.PurgedDatabase(ctx, in.ID); err == nil {
					in.Shard = d.Shard
				}
			}
			if in.Shard == "" || checked[in.Shard] || (p.Product != "" && in.Product != p.Product) {
				continue
			}
			checked[in.Shard] = true
			if sh, err := st.GetShard(ctx, in.Shard); err == nil && sh.Backups == catalog.BackupsByProvider {
				return catalog.Invalid("shard_backed_up_by_provider",
					"tenant %s's %s database is on shard %s, which relies on its provider's backups: restore it with the provider's tools", t.Slug, in.Product, in.Shard)
			}
			if err := s.cfg.Restorer.CheckTarget(ctx, in.Shard, *p.Target); errors.Is(err, backup.ErrNoBackupBefore) {
				return catalog.Invalid("no_backup_before_target", "%v", err)
			} else if err != nil {
				return catalog.Unavailable("backups_unavailable", "cannot read the backups of shard %s: %v", in.Shard, err)
			}
		}
	}
	return nil
}

type restoreWorker struct {
	river.WorkerDefaults[RestoreArgs]
	*workers
}

func (w *restoreWorker) NextRetry(job *river.Job[RestoreArgs]) time.Time {
	return w.backoff(job.Attempt)
}

// Timeout is generous: a large tenant's copy takes minutes. A second
// worker that picks the job up meanwhile (River rescues long jobs) waits on
// the restore's lock.
func (w *restoreWorker) Timeout(*river.Job[RestoreArgs]) time.Duration { return 2 * time.Hour }

// Work carries a restore forward: it copies every pending item out of one
// scratch restore per shard, swaps each tenant whose items are all copied,
// and finishes the restore.
func (w *restoreWorker) Work(ctx context.Context, job *river.Job[RestoreArgs]) error {
	id := job.Args.RestoreID
	log := w.log.With("restore_id", id, "attempt", job.Attempt)
	unlock, err := w.lockRestore(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := w.store.GetRestore(ctx, id)
	if err != nil {
		return err
	}
	if r.State != catalog.RestoreRunning {
		return nil
	}
	err = w.restore(ctx, r)
	if err == nil {
		r, err = w.store.FinishRestore(ctx, id, "")
		if err == nil {
			log.Info("restore finished", "state", r.State)
			return nil
		}
	}
	if !finalAttempt(err, job.Attempt, job.MaxAttempts) {
		log.Warn("restore attempt failed; will retry", "error", err)
		return err
	}
	log.Error("restore failed", "error", err)
	rctx, cancel := recordCtx(ctx)
	defer cancel()
	if ferr := w.giveUp(rctx, id, err); ferr != nil {
		return fmt.Errorf("record restore failure: %w (after: %w)", ferr, err)
	}
	return river.JobCancel(err)
}

// lockRestore holds a session lock on the restore for as long as this
// worker carries it out, so that a rescued duplicate waits.
func (w *workers) lockRestore(ctx context.Context, id uuid.UUID) (func(), error) {
	return w.lockRun(ctx, orphanRestores, id)
}

// lockRun holds a session lock on a long run (a restore or a drill) of
// kind k for as long as this worker carries it out: a rescued duplicate
// waits, and the sweeper knows a running job whose lock is free has no
// worker.
func (w *workers) lockRun(ctx context.Context, k orphanKind, id uuid.UUID) (func(), error) {
	conn, err := w.store.Pool().Acquire(ctx)
	if err != nil {
		return nil, err
	}
	var ok bool
	key := "plinth." + k.what + ":" + id.String()
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("lock %s: %w", k.what, err)
	}
	if !ok {
		conn.Release()
		return nil, fmt.Errorf("%s %s is being carried out by another worker", k.what, id)
	}
	return func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key)
		conn.Release()
	}, nil
}

func (w *restoreWorker) restore(ctx context.Context, r catalog.Restore) error {
	byShard := map[string][]catalog.RestoreItem{}
	for _, it := range r.Items {
		if it.State == catalog.ItemPending {
			byShard[it.Shard] = append(byShard[it.Shard], it)
		}
	}
	shards := make([]string, 0, len(byShard))
	for s := range byShard {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	// Shards are restored side by side: each has its own scratch server,
	// and a mass restore is bound by the slowest shard, not their sum. One
	// shard's failure does not stop the others (their copies stand; the
	// retry redoes only what is pending).
	if err := all(0, shards, func(s string) error { return w.copyShard(ctx, r, s, byShard[s]) }); err != nil {
		return err
	}
	r, err := w.store.GetRestore(ctx, r.ID)
	if err != nil {
		return err
	}
	byTenant := map[uuid.UUID][]catalog.RestoreItem{}
	var tenants []uuid.UUID
	for _, it := range r.Items {
		if _, ok := byTenant[it.TenantID]; !ok {
			tenants = append(tenants, it.TenantID)
		}
		byTenant[it.TenantID] = append(byTenant[it.TenantID], it)
	}
	// Each tenant's swap is a transaction of its own, so they too go
	// Concurrency at a time; one that fails never cuts another short
	// (which would leave that tenant restoring and fenced until a retry).
	return all(r.Concurrency, tenants, func(t uuid.UUID) error { return w.swap(context.WithoutCancel(ctx), r, byTenant[t]) })
}

// copyShard restores the shard's databases of the items into one scratch
// server and copies each into a new database on the live shard, Concurrency
// at a time. An item that cannot be copied is recorded as failed; a scratch
// restore that fails is retried.
func (w *restoreWorker) copyShard(ctx context.Context, r catalog.Restore, shardName string, items []catalog.RestoreItem) error {
	if w.cfg.Restorer == nil {
		return permanent(errors.New("this worker runs no backups, so it cannot restore"))
	}
	live, err := w.shard(ctx, shardName)
	if err != nil {
		return err
	}
	var dbs []string
	for _, it := range items {
		if !slices.Contains(dbs, it.SourceDatabase) {
			dbs = append(dbs, it.SourceDatabase)
		}
	}
	dir := filepath.Join(w.cfg.ScratchDir, r.ID.String()[:8]+"-"+shardName)
	scratch, took, err := w.cfg.Restorer.Scratch(ctx, shardName, dbs, *r.TargetTime, dir)
	if errors.Is(err, backup.ErrNoBackupBefore) {
		err = permanent(err)
	}
	if err != nil {
		return fmt.Errorf("restore shard %s into scratch: %w", shardName, err)
	}
	defer func() {
		if err := backup.DiscardScratch(context.WithoutCancel(ctx), dir); err != nil {
			w.log.Warn("discard scratch restore", "dir", dir, "error", err)
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.Concurrency)
	for _, it := range items {
		g.Go(func() error {
			began := time.Now()
			version, err := w.copyItem(gctx, r, live, scratch, it)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				w.log.Warn("restore copy failed", "tenant", it.Tenant, "product", it.Product, "error", err)
				return w.store.FailRestoreItem(gctx, r.ID, it.InstallationID, err.Error())
			}
			return w.store.MarkRestoreCopied(gctx, r.ID, it.InstallationID, version, catalog.ItemTimes{
				Restore: took[0].Milliseconds(), Replay: took[1].Milliseconds(), Copy: time.Since(began).Milliseconds(),
			})
		})
	}
	return g.Wait()
}

// copyItem copies one database out of the scratch server into a new
// database on the live shard, then checks and adopts its identity.
func (w *restoreWorker) copyItem(ctx context.Context, r catalog.Restore, live *tenantdb.Shard, scratch *localpg.Cluster, it catalog.RestoreItem) (int64, error) {
	d, err := w.store.ReserveRestoreCopy(ctx, r.ID, it.InstallationID)
	if err != nil {
		return 0, err
	}
	src, err := pgx.ParseConfig(scratch.DSN(it.SourceDatabase))
	if err != nil {
		return 0, err
	}
	if err := live.CopyFrom(ctx, d.Name, src); err != nil {
		return 0, err
	}
	asTenant, asInstallation := it.TenantID, it.InstallationID
	if r.AsTenantID != nil && it.AsInstallationID != nil {
		asTenant, asInstallation = *r.AsTenantID, *it.AsInstallationID
	}
	id, err := live.AdoptAs(ctx, d.Name, d.ID, it.SourceDatabaseID, it.TenantID, it.InstallationID, asTenant, asInstallation)
	if err != nil {
		return 0, err
	}
	if id.Product != it.Product {
		return 0, fmt.Errorf("the restored database is of product %s, not %s: %w", id.Product, it.Product, tenantdb.ErrIdentityMismatch)
	}
	return id.SchemaVersion, nil
}

// swap puts a tenant's copied databases in place: the tenant goes to
// restoring (the edge holds its requests), the databases it had stop
// taking connections, the catalog points its installations at the restored
// ones and the tenant returns to its state, in one transaction. A tenant
// with a failed item is not swapped at all.
func (w *restoreWorker) swap(ctx context.Context, r catalog.Restore, items []catalog.RestoreItem) error {
	t := items[0]
	var copied []catalog.RestoreItem
	failed := ""
	for _, it := range items {
		switch it.State {
		case catalog.ItemCopied:
			copied = append(copied, it)
		case catalog.ItemFailed:
			failed = it.Product + ": " + it.Error
		case catalog.ItemPending:
			return fmt.Errorf("tenant %s's %s database is not copied yet", it.Tenant, it.Product)
		}
	}
	if len(copied) == 0 {
		if r.AsTenantID != nil && failed != "" { // the new tenant fails too
			return w.store.AbortRestoreSwap(ctx, r.ID, t.TenantID, t.PriorState, "the restore failed: "+failed, ActorRestorer)
		}
		return nil
	}
	if failed != "" {
		return w.abort(ctx, r, copied, "another database of the tenant failed to restore: "+failed)
	}
	began := time.Now()
	// A restore into a new tenant leaves the tenant restored from as it is:
	// not restoring, its databases not fenced.
	inPlace := r.AsTenantID == nil
	if inPlace {
		err := w.store.BeginRestoreSwap(ctx, t.TenantID, t.PriorState, ActorRestorer)
		if errors.Is(err, catalog.ErrIllegalTransition) {
			return w.abort(ctx, r, copied, "the tenant changed state during the restore: "+err.Error())
		}
		if err != nil {
			return err
		}
	}
	for _, it := range copied {
		sh, err := w.shard(ctx, it.Shard)
		if err != nil {
			return err
		}
		if inPlace {
			if err := sh.Fence(ctx, it.CurrentDatabase); err != nil {
				return err
			}
		}
		if err := sh.Unfence(ctx, it.RestoredDatabase); err != nil {
			return err
		}
	}
	err := w.store.FinishRestoreSwap(ctx, r.ID, t.TenantID, time.Since(began).Milliseconds(), ActorRestorer)
	if ce, ok := catalog.AsError(err); ok && ce.Kind == catalog.KindConflict {
		return w.abort(ctx, r, copied, err.Error())
	}
	if err == nil {
		w.log.Info("tenant restored", "tenant", t.Tenant, "as", r.AsTenant, "restore_id", r.ID, "swap_ms", time.Since(began).Milliseconds())
	}
	return err
}

// abort gives up a tenant's swap: its databases take connections again and
// it returns to its state, with the items failed.
func (w *restoreWorker) abort(ctx context.Context, r catalog.Restore, items []catalog.RestoreItem, msg string) error {
	for _, it := range items {
		if r.AsTenantID != nil {
			break // into a new tenant: the one restored from was never fenced
		}
		if sh, err := w.shard(ctx, it.Shard); err == nil {
			if err := sh.Unfence(ctx, it.CurrentDatabase); err != nil {
				return err
			}
		}
	}
	t := items[0]
	return w.store.AbortRestoreSwap(ctx, r.ID, t.TenantID, t.PriorState, msg, ActorRestorer)
}

// giveUp ends a restore whose job failed for good: tenants mid-swap return
// to their state with their databases as they were, and the rest fails.
func (w *restoreWorker) giveUp(ctx context.Context, id uuid.UUID, cause error) error {
	r, err := w.store.GetRestore(ctx, id)
	if err != nil {
		return err
	}
	byTenant := map[uuid.UUID][]catalog.RestoreItem{}
	for _, it := range r.Items {
		if it.State == catalog.ItemCopied || it.State == catalog.ItemPending {
			byTenant[it.TenantID] = append(byTenant[it.TenantID], it)
		}
	}
	for _, items := range byTenant {
		if err := w.abort(ctx, r, items, cause.Error()); err != nil {
			return err
		}
	}
	if r.AsTenantID != nil && len(byTenant) == 0 && len(r.Items) > 0 { // the new tenant fails too
		if err := w.store.AbortRestoreSwap(ctx, id, r.Items[0].TenantID, r.Items[0].PriorState, cause.Error(), ActorRestorer); err != nil {
			return err
		}
	}
	_, err = w.store.FinishRestore(ctx, id, failureReason(cause))
	return err
}

// orphanKind is a kind of long run whose worker may die: its catalog
// table (with id and state columns), the job kind and the job argument
// naming the run.
type orphanKind struct{ what, table, job, arg string }

var (
	orphanRestores = orphanKind{"restore", "restores", RestoreArgs{}.Kind(), "restore_id"}
	orphanDrills   = orphanKind{"drill", "drills", DrillArgs{}.Kind(), "drill_id"}
)

// resumeOrphans hands on the jobs of restores and drills whose
// worker died: River rescues a job only after its timeout, hours for a
// restore, but a worker that carries one out holds its lock on a live
// connection, so a running job whose lock is free has no worker. It is made
// retryable at once (as River's own rescuer would).
func (w *workers) resumeOrphans(ctx context.Context) error {
	return errors.Join(w.resumeOrphaned(ctx, orphanRestores), w.resumeOrphaned(ctx, orphanDrills))
}

func (w *workers) resumeOrphaned(ctx context.Context, k orphanKind) error {
	rows, err := w.store.Pool().Query(ctx, `
		SELECT r.id, j.id FROM `+k.table+` r
		JOIN river_job j ON j.kind = $1 AND j.args ->> $2 = r.id::text
		WHERE r.state = 'running' AND j.state = 'running' AND j.attempted_at < now() - interval '30 seconds'`,
		k.job, k.arg)
	if err != nil {
		return fmt.Errorf("find orphaned %ss: %w", k.what, err)
	}
	type orphan struct {
		run uuid.UUID
		job int64
	}
	orphans, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (orphan, error) {
		var o orphan
		return o, row.Scan(&o.run, &o.job)
	})
	if err != nil {
		return fmt.Errorf("find orphaned %ss: %w", k.what, err)
	}
	for _, o := range orphans {
		unlock, err := w.lockRun(ctx, k, o.run)
		if err != nil {
			continue // a worker is on it
		}
		_, err = w.store.Pool().Exec(ctx, `UPDATE river_job SET state = 'retryable', scheduled_at = now()
			WHERE id = $1 AND state = 'running'`, o.job)
		unlock()
		if err != nil {
			return fmt.Errorf("hand on orphaned %s %s: %w", k.what, o.run, err)
		}
		w.log.Warn("resuming a "+k.what+" whose worker died", k.arg, o.run, "job_id", o.job)
	}
	return nil
}
