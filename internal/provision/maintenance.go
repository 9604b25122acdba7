package provision

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
)

type healthWorker struct {
	river.WorkerDefaults[HealthArgs]
	*workers
}

func (w *healthWorker) Timeout(*river.Job[HealthArgs]) time.Duration { return time.Minute }

// Work probes every shard and records the result; a shard turns unhealthy
// after UnhealthyAfter consecutive failures and healthy at the first success.
func (w *healthWorker) Work(ctx context.Context, _ *river.Job[HealthArgs]) error {
	shards, err := w.store.ListShards(ctx, "")
	if err != nil {
		return err
	}
	for _, sh := range shards {
		conn, err := w.pools.Shard(sh)
		if err == nil {
			err = fleet.Probe(ctx, conn)
		}
		changed, rerr := w.store.RecordProbe(ctx, sh.Name, err, w.cfg.UnhealthyAfter)
		if rerr != nil {
			w.log.Error("record shard probe", "shard", sh.Name, "error", rerr)
			continue // the other shards still get probed
		}
		if changed {
			w.log.Warn("shard health changed", "shard", sh.Name, "healthy", err == nil, "error", err)
		}
	}
	return nil
}

type refillWorker struct {
	river.WorkerDefaults[RefillArgs]
	*workers
}

func (w *refillWorker) Timeout(*river.Job[RefillArgs]) time.Duration { return 10 * time.Minute }

// Work retires warm databases that can no longer be claimed and fills every
// pool up to its size, round after round until no pool lacks anything (a
// claim during a round is made good in the next). A shard that fails is
// skipped until the next run.
func (w *refillWorker) Work(ctx context.Context, _ *river.Job[RefillArgs]) error {
	if n, err := w.store.RetireWarm(ctx); err != nil {
		return err
	} else if n > 0 {
		w.log.Info("retired warm databases", "count", n)
	}
	failed := map[string]bool{}
	for round := 0; round < 100; round++ {
		deficits, err := w.store.WarmDeficits(ctx)
		if err != nil {
			return err
		}
		progress := false
		for _, d := range deficits {
			if failed[d.Shard] {
				continue
			}
			// Small batches, so that one pool does not hold up the others.
			if err := w.fill(ctx, d, min(d.Missing, 4)); err != nil {
				w.log.Warn("refill warm pool", "shard", d.Shard, "product", d.Product, "error", err)
				failed[d.Shard] = true
				continue
			}
			progress = true
		}
		if !progress {
			return nil
		}
	}
	return nil
}

func (w *refillWorker) fill(ctx context.Context, def catalog.WarmDeficit, n int) error {
	shard, err := w.shard(ctx, def.Shard)
	if err != nil {
		return err
	}
	intents, err := w.store.ReserveWarm(ctx, def.Shard, def.Product, def.Version, n)
	if err != nil {
		return err
	}
	if len(intents) == 0 {
		return errors.New("shard is full")
	}
	for _, d := range intents {
		// No connection to the new database: its identity (with its own ID)
		// is stamped when a tenant claims it, which keeps refills light.
		if err := w.create(ctx, shard, d); err != nil {
			// Leave the intent: the sweeper drops it once it is stale.
			return err
		}
		ok, err := w.store.SetDatabaseState(ctx, d.ID, catalog.DatabaseCreating, catalog.DatabaseWarm)
		if err != nil {
			return err
		}
		if !ok {
			// The sweeper gave the intent up while we created it: what we
			// made has no record any more, so it goes.
			_ = shard.Drop(ctx, d.Name)
			return fmt.Errorf("warm database %s was abandoned while it was being created", d.Name)
		}
	}
	return nil
}

type sweepWorker struct {
	river.WorkerDefaults[SweepArgs]
	*workers
}

func (w *sweepWorker) Timeout(*river.Job[SweepArgs]) time.Duration { return 10 * time.Minute }

// Work drops databases marked for dropping (abandoned intents, retired warm
// databases, replaced ones past their retention), fails operations whose job ended without finishing them,
// queues purges of tenants whose retention ended, removes service
// instances that stopped heartbeating, prunes the change log and hands on
// restores whose worker died.
func (w *sweepWorker) Work(ctx context.Context, _ *river.Job[SweepArgs]) error {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return err
	}
	return errors.Join(w.expireReplaced(ctx), w.dropMarked(ctx), w.failOrphanedOperations(ctx, client), w.purgeExpired(ctx, client),
		w.forgetIdempotencyKeys(ctx), w.sweepInstances(ctx), w.pruneChanges(ctx), w.resumeOrphans(ctx))
}

// expireReplaced marks for dropping the databases restores replaced longer
// than ReplacedRetention ago: their undo window is over.
func (w *sweepWorker) expireReplaced(ctx context.Context) error {
	n, err := w.store.ExpireReplaced(ctx, w.cfg.ReplacedRetention, 500)
	if n > 0 {
		w.log.Info("replaced databases past their retention will be dropped", "databases", n,
			"retention", w.cfg.ReplacedRetention.String())
	}
	return err
}

func (w *sweepWorker) pruneChanges(ctx context.Context) error {
	n, err := w.store.PruneChanges(ctx, w.cfg.ChangeRetention)
	if n > 0 {
		w.log.Info("pruned the change log", "rows", n, "retention", w.cfg.ChangeRetention.String())
	}
	return err
}

// Service instances not heard from for a minute are gone (killed without
// deregistering); their keys expire once no token signed with them is valid.
const (
	instanceDeadAfter = time.Minute
	instanceKeyGrace  = time.Hour + 30*time.Second
)

func (w *sweepWorker) sweepInstances(ctx context.Context) error {
	n, err := w.store.SweepInstances(ctx, instanceDeadAfter, instanceKeyGrace)
	if n > 0 {
		w.log.Info("removed dead service instances", "count", n)
	}
	return err
}

func (w *sweepWorker) dropMarked(ctx context.Context) error {
	dbs, err := w.store.ToDrop(ctx, w.cfg.AbandonAfter, 500)
	if err != nil {
		return err
	}
	for _, d := range dbs {
		shard, err := w.shard(ctx, d.Shard)
		if err == nil {
			// A CREATE DATABASE still running for it (its worker died but the
			// server finishes the command) would recreate it after the drop.
			var busy bool
			if busy, err = shard.BeingCreated(ctx, d.Name); err == nil && busy {
				continue // the next sweep
			}
		}
		if err == nil {
			err = shard.Drop(ctx, d.Name)
		}
		if err != nil {
			w.log.Warn("drop database", "database", d.Name, "shard", d.Shard, "error", err)
			continue // the shard may be down; the next sweep tries again
		}
		if _, err := w.store.SetDatabaseState(ctx, d.ID, catalog.DatabaseDropping, catalog.DatabaseDropped); err != nil {
			return err
		}
	}
	return nil
}

// failOrphanedOperations closes operations whose job is gone: River can
// discard a job without running it again (its worker died on the last
// attempt), which would otherwise leave a tenant provisioning for ever.
func (w *sweepWorker) failOrphanedOperations(ctx context.Context, client *river.Client[pgx.Tx]) error {
	ops, err := w.store.RunningOperations(ctx, 500)
	if err != nil {
		return err
	}
	for _, op := range ops {
		if op.JobID == nil || time.Since(op.CreatedAt) < time.Minute {
			continue
		}
		job, err := client.JobGet(ctx, *op.JobID)
		if err != nil && !errors.Is(err, river.ErrNotFound) {
			return err
		}
		if err == nil && !finalized(job.State) {
			continue
		}
		reason := "its job ended without finishing it"
		if job != nil {
			reason = fmt.Sprintf("its job ended (%s) without finishing it", job.State)
		}
		err = w.store.InTx(ctx, func(tx *catalog.Store) error {
			if op.Kind == OperationProvision && op.TenantID != nil {
				_, err := tx.Transition(ctx, catalog.TransitionParams{
					TenantID: *op.TenantID, Action: "provisioning_failed", Actor: ActorProvisioner, Reason: reason,
					From: []catalog.TenantState{catalog.StateProvisioning}, To: catalog.StateFailed,
				})
				if err != nil && !errors.Is(err, catalog.ErrIllegalTransition) {
					return err
				}
			}
			return tx.FinishOperation(ctx, op.ID, catalog.OperationFailed, reason)
		})
		if err != nil {
			return err
		}
		w.log.Warn("failed orphaned operation", "operation_id", op.ID, "kind", op.Kind, "reason", reason)
	}
	return nil
}

func finalized(s rivertype.JobState) bool {
	return s == rivertype.JobStateCompleted || s == rivertype.JobStateCancelled || s == rivertype.JobStateDiscarded
}

func (w *sweepWorker) purgeExpired(ctx context.Context, client *river.Client[pgx.Tx]) error {
	ids, err := w.store.ExpiredTenants(ctx, 100)
	if err != nil {
		return err
	}
	svc := &Service{cfg: w.cfg, river: client}
	for _, id := range ids {
		_, _, err := svc.Act(ctx, w.store, ActRequest{
			Tenant: id.String(), Action: catalog.ActionPurge, Actor: ActorPurger, Reason: "retention period ended",
		})
		if err != nil {
			w.log.Warn("queue purge of expired tenant", "tenant_id", id, "error", err)
		}
	}
	return nil
}

func (w *sweepWorker) forgetIdempotencyKeys(ctx context.Context) error {
	_, err := w.store.ForgetIdempotencyKeys(ctx, 24)
	return err
}
