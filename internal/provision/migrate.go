package provision

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// MigrateArgs is the durable job of a fleet-wide migration run. One job
// works a run in slices (each shorter than River's stuck-job rescue), and
// queues itself again until the run is over; the run's tasks in the catalog
// are the progress, so a worker killed at any point loses nothing.
type MigrateArgs struct {
	RunID uuid.UUID `json:"run_id"`
}

// Kind implements river.JobArgs.
func (MigrateArgs) Kind() string { return "product.migrate" }

// migrateOpts keeps one job per run waiting or running.
var migrateOpts = &river.InsertOpts{
	Queue:       queueMaintenance,
	MaxAttempts: 25,
	UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
		rivertype.JobStateScheduled, rivertype.JobStateRetryable,
	}},
}

// StartMigration records a run and queues its job, in one transaction.
func (s *Service) StartMigration(ctx context.Context, st *catalog.Store, p catalog.CreateRunParams) (catalog.MigrationRun, error) {
	var run catalog.MigrationRun
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		if run, err = tx.CreateMigrationRun(ctx, p); err != nil {
			return err
		}
		_, err = s.river.InsertTx(ctx, tx.Tx(), MigrateArgs{RunID: run.ID}, migrateOpts)
		return err
	})
	return run, err
}

// PauseMigration pauses a run: tasks in flight finish, no new ones start.
func (s *Service) PauseMigration(ctx context.Context, st *catalog.Store, id uuid.UUID, actor string) (catalog.MigrationRun, error) {
	return st.SetRunState(ctx, id, []string{catalog.RunRunning}, catalog.RunPaused, "paused by "+actor)
}

// ResumeMigration resumes a paused run (or one whose job gave up).
func (s *Service) ResumeMigration(ctx context.Context, st *catalog.Store, id uuid.UUID) (catalog.MigrationRun, error) {
	var run catalog.MigrationRun
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		cur, err := tx.GetMigrationRun(ctx, id)
		if err != nil {
			return err
		}
		if cur.State == catalog.RunPaused {
			if run, err = tx.SetRunState(ctx, id, []string{catalog.RunPaused}, catalog.RunRunning, ""); err != nil {
				return err
			}
		} else if cur.State == catalog.RunRunning {
			run = cur
		} else {
			return catalog.Conflict("illegal_transition", "migration run %s is %s", id, cur.State)
		}
		_, err = s.river.InsertTx(ctx, tx.Tx(), MigrateArgs{RunID: id}, migrateOpts)
		return err
	})
	return run, err
}

type migrateWorker struct {
	river.WorkerDefaults[MigrateArgs]
	*workers
}

// NextRetry retries soon: a run's job fails only when the catalog or a
// worker did (a tenant's failure is recorded, not raised), and a rescued
// job should carry on at once.
func (w *migrateWorker) NextRetry(job *river.Job[MigrateArgs]) time.Time {
	return w.backoff(job.Attempt)
}

func (w *migrateWorker) Timeout(*river.Job[MigrateArgs]) time.Duration {
	return w.slice() + time.Minute
}

// slice is how long one execution works before queueing the rest: well
// inside River's rescue of jobs it thinks stuck.
func (w *migrateWorker) slice() time.Duration { return min(w.cfg.RescueAfter/3, time.Minute) }

// minSample is how many finished tasks the failure ratio needs before it
// can stop a run (one early failure out of two is no verdict).
const minSample = 10

// Work runs a slice of a migration run: tasks a killed worker left running
// go back to pending, then batches of Concurrency tasks run, wave after
// wave, until the run is done, paused, stopped, or the slice is over.
func (w *migrateWorker) Work(ctx context.Context, job *river.Job[MigrateArgs]) error {
	id := job.Args.RunID
	log := w.log.With("run_id", id)
	run, err := w.store.GetMigrationRun(ctx, id)
	if err != nil {
		return err
	}
	if run.State != catalog.RunRunning {
		return nil // paused or over: resuming queues a new job
	}
	if n, err := w.store.ResetRunningTasks(ctx, id); err != nil {
		return err
	} else if n > 0 {
		log.Warn("resuming a migration run: tasks left running by a stopped worker go again", "tasks", n)
	}
	migrations, err := w.store.Migrations(ctx, run.Product, run.TargetVersion)
	if err != nil {
		return err
	}
	end := time.Now().Add(w.slice())
	for time.Now().Before(end) {
		if run, err = w.store.GetMigrationRun(ctx, id); err != nil {
			return err
		}
		if run.State != catalog.RunRunning {
			log.Info("migration run no longer running", "state", run.State)
			return nil
		}
		claimed, err := w.work(ctx, run, migrations, end)
		if err != nil {
			return err
		}
		if stop, why, err := w.tooManyFailures(ctx, id); err != nil {
			return err
		} else if stop {
			log.Warn("stopping a migration run", "reason", why)
			_, err := w.store.SetRunState(ctx, id, []string{catalog.RunRunning}, catalog.RunStopped, why)
			return err
		}
		if claimed == 0 {
			if run, err = w.store.GetMigrationRun(ctx, id); err != nil {
				return err
			}
			if run.State != catalog.RunRunning {
				return nil
			}
			return w.finish(ctx, run)
		}
	}
	// The slice is over: the same job runs again at once, with what is left.
	return river.JobSnooze(0)
}

// work runs Concurrency goroutines that each claim one task at a time
// (no batch waits for its slowest tenant) until the wave runs dry, the
// slice ends, a canary fails, or the run is paused or stops meeting its
// failure ratio (checked twice a second). It returns how many tasks it
// claimed.
func (w *migrateWorker) work(ctx context.Context, run catalog.MigrationRun, ms []catalog.Migration, end time.Time) (int64, error) {
	var claimed, inflight atomic.Int64
	var halt atomic.Bool
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() { // pause and failure ratio
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-t.C:
			}
			cur, err := w.store.GetMigrationRun(watchCtx, run.ID)
			if err == nil && cur.State != catalog.RunRunning {
				halt.Store(true)
			}
			if stop, _, err := w.tooManyFailures(watchCtx, run.ID); err == nil && stop {
				halt.Store(true)
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, run.Concurrency)
	for g := range run.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !halt.Load() && time.Now().Before(end) && ctx.Err() == nil {
				inflight.Add(1)
				tasks, err := w.store.ClaimMigrationTasks(ctx, run.ID, 1)
				if err != nil {
					inflight.Add(-1)
					errs[g] = err
					return
				}
				if len(tasks) == 0 {
					if inflight.Add(-1) == 0 {
						return // nothing left to start, and nothing in flight that could open the next wave
					}
					// The wave's last tasks are in flight: the next wave opens when they end.
					time.Sleep(20 * time.Millisecond)
					continue
				}
				claimed.Add(1)
				t := tasks[0]
				terr := w.migrateOne(ctx, t, ms, run.TargetVersion)
				if terr != nil {
					w.log.Warn("a tenant database failed to migrate", "run_id", run.ID, "tenant_id", t.TenantID, "database", t.Database, "error", terr)
				}
				if ctx.Err() != nil && terr != nil {
					inflight.Add(-1)
					return // the job is ending: the task stays running and is reset on resume
				}
				rctx, cancel := recordCtx(ctx)
				err = w.store.FinishMigrationTask(rctx, run.ID, t.DatabaseID, run.TargetVersion, terr)
				cancel()
				inflight.Add(-1)
				if err != nil {
					errs[g] = err
					return
				}
				if terr != nil && t.Wave == 0 {
					halt.Store(true) // a canary failed: the run stops
				}
			}
		}()
	}
	wg.Wait()
	return claimed.Load(), errors.Join(errs...)
}

// migrateOne applies the migrations up to version to one tenant database.
func (w *migrateWorker) migrateOne(ctx context.Context, t catalog.MigrationTask, ms []catalog.Migration, version int64) error {
	sh, err := w.store.GetShard(ctx, t.Shard)
	if err != nil {
		return err
	}
	conn, err := w.pools.Shard(sh)
	if err != nil {
		return err
	}
	return conn.Migrate(ctx, t.Database, ms, version)
}

// tooManyFailures says whether the run must stop: a canary failed, or
// failures passed the run's ratio.
func (w *migrateWorker) tooManyFailures(ctx context.Context, id uuid.UUID) (bool, string, error) {
	run, err := w.store.GetMigrationRun(ctx, id)
	if err != nil {
		return false, "", err
	}
	failed, done := run.Tasks["failed"], run.Tasks["done"]
	canaries, err := w.store.FailedCanaries(ctx, id)
	if err != nil {
		return false, "", err
	}
	if canaries > 0 {
		return true, fmt.Sprintf("%d canary tenant(s) failed to migrate", canaries), nil
	}
	if finished := failed + done; finished >= minSample && float64(failed)/float64(finished) > run.MaxFailureRatio {
		return true, fmt.Sprintf("%d of %d tenants failed to migrate, more than the ratio %.2f", failed, finished, run.MaxFailureRatio), nil
	}
	return false, "", nil
}

// finish ends a run whose tasks are all done or failed.
func (w *migrateWorker) finish(ctx context.Context, run catalog.MigrationRun) error {
	if run.Tasks["running"] > 0 {
		return river.JobSnooze(time.Second) // another slice still has some in flight
	}
	state, why := catalog.RunSucceeded, ""
	if n := run.Tasks["failed"]; n > 0 {
		state, why = catalog.RunFinishedWithFailures, fmt.Sprintf("%d tenant(s) failed to migrate", n)
	}
	_, err := w.store.SetRunState(ctx, run.ID, []string{catalog.RunRunning}, state, why)
	if err == nil {
		w.log.Info("migration run finished", "run_id", run.ID, "state", state, "done", run.Tasks["done"], "failed", run.Tasks["failed"])
	}
	return err
}
