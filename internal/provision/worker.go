package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"golang.org/x/sync/errgroup"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Actors recorded in the audit log for work the platform does by itself.
const (
	ActorProvisioner = "system:provisioner"
	ActorPurger      = "system:purger"
)

// workers holds what every job needs.
type workers struct {
	cfg   Config
	store *catalog.Store
	pools *fleet.Pools
	log   *slog.Logger
}

// backoff is the delay before retry attempt n+1: exponential with jitter.
func (w *workers) backoff(attempt int) time.Time {
	d := w.cfg.RetryBase << min(attempt-1, 20)
	d = min(d, w.cfg.RetryMax)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return time.Now().Add(d)
}

// permanentError marks an error no retry can fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// finalAttempt reports whether a failed job should give up now.
func finalAttempt(err error, attempt, maxAttempts int) bool {
	var p permanentError
	return errors.As(err, &p) || attempt >= maxAttempts
}

// recordCtx is for recording a failure after the job's own context ended
// (it timed out, say): the record must still be written.
func recordCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

type provisionWorker struct {
	river.WorkerDefaults[ProvisionArgs]
	*workers
}

func (w *provisionWorker) NextRetry(job *river.Job[ProvisionArgs]) time.Time {
	return w.backoff(job.Attempt)
}

// Work provisions every pending installation of the tenant, activates the
// tenant, then stamps the tenant's identity into its databases. On its last
// attempt it fails the tenant instead, with the reason, and leaves what it
// recorded for `tenant retry` to resume.
//
// The identity is stamped after activation on purpose: a database is
// complete and migrated the moment CREATE DATABASE … TEMPLATE returns, and a
// new connection costs a Postgres backend start (25 ms on a small VM), so it
// is kept off the path a new tenant waits on. The job does not complete
// until every database is stamped; a retry on an active tenant stamps again.
func (w *provisionWorker) Work(ctx context.Context, job *river.Job[ProvisionArgs]) error {
	args := job.Args
	log := w.log.With("tenant_id", args.TenantID, "operation_id", args.OperationID, "attempt", job.Attempt)
	claimedWarm, err := w.provision(ctx, args)
	if err == nil {
		log.Info("tenant provisioned")
		if claimedWarm {
			w.kickRefill(ctx)
		}
		if err = w.stampAll(ctx, args.TenantID); err == nil {
			return nil
		}
	}
	if !finalAttempt(err, job.Attempt, job.MaxAttempts) {
		log.Warn("provisioning attempt failed; will retry", "error", err)
		return err
	}
	log.Error("provisioning failed", "error", err)
	rctx, cancel := recordCtx(ctx)
	defer cancel()
	if ferr := w.fail(rctx, args, err); ferr != nil {
		return fmt.Errorf("record provisioning failure: %w (after: %w)", ferr, err)
	}
	return river.JobCancel(err)
}

func (w *provisionWorker) provision(ctx context.Context, args ProvisionArgs) (claimedWarm bool, err error) {
	t, err := w.store.GetTenantByID(ctx, args.TenantID)
	if err != nil {
		return false, err
	}
	if t.State != catalog.StateProvisioning {
		// Already done by an earlier run, or moved on (deleted after failing):
		// either way there is nothing left to provision.
		state, msg := catalog.OperationSucceeded, ""
		if t.State != catalog.StateActive {
			state, msg = catalog.OperationFailed, fmt.Sprintf("tenant is %s", t.State)
		}
		return false, w.store.FinishOperation(ctx, args.OperationID, state, msg)
	}
	for _, inst := range t.Installations {
		if inst.State == catalog.InstallationReady {
			continue
		}
		warm, err := w.installation(ctx, inst)
		if err != nil {
			return false, fmt.Errorf("provision %s: %w", inst.Product, err)
		}
		claimedWarm = claimedWarm || warm
	}
	err = w.store.InTx(ctx, func(tx *catalog.Store) error {
		for _, inst := range t.Installations {
			if err := tx.SetInstallationState(ctx, inst.ID, catalog.InstallationReady); err != nil {
				return err
			}
		}
		if _, err := tx.Transition(ctx, catalog.TransitionParams{
			TenantID: t.ID, Action: "provisioned", Actor: ActorProvisioner,
			From: []catalog.TenantState{catalog.StateProvisioning}, To: catalog.StateActive,
		}); err != nil {
			return err
		}
		return tx.FinishOperation(ctx, args.OperationID, catalog.OperationSucceeded, "")
	})
	return claimedWarm, err
}

// installation gives one installation its database: reserve it (claim a
// warm one, or record the intent to create one), and create it from the
// product template when needed.
func (w *provisionWorker) installation(ctx context.Context, inst catalog.Installation) (warm bool, err error) {
	d, warm, err := w.store.ReserveDatabase(ctx, inst.ID)
	if err != nil {
		return false, err
	}
	if d.State != catalog.DatabaseCreating {
		return warm, nil
	}
	shard, err := w.shard(ctx, d.Shard)
	if err != nil {
		return false, err
	}
	if err := w.create(ctx, shard, d); err != nil {
		w.abandonIfShardDown(ctx, shard, d)
		return false, err
	}
	ok, err := w.store.SetDatabaseState(ctx, d.ID, catalog.DatabaseCreating, catalog.DatabaseAssigned)
	if err == nil && !ok {
		// Another attempt abandoned it meanwhile; the sweeper drops it and
		// the next attempt places the installation anew.
		err = fmt.Errorf("database %s was abandoned while it was being created", d.Name)
	}
	return false, err
}

// stampAll records in each of an active tenant's databases which tenant and
// installation it belongs to.
func (w *provisionWorker) stampAll(ctx context.Context, tenantID uuid.UUID) error {
	t, err := w.store.GetTenantByID(ctx, tenantID)
	if err != nil || t.State != catalog.StateActive {
		return err
	}
	for _, inst := range t.Installations {
		if inst.DatabaseID == nil {
			continue
		}
		shard, err := w.shard(ctx, inst.Shard)
		if err != nil {
			return err
		}
		if err := shard.Stamp(ctx, inst.Database, *inst.DatabaseID, &t.ID, &inst.ID); err != nil {
			if errors.Is(err, tenantdb.ErrIdentityMismatch) {
				return permanent(err) // someone else's database: needs a person, not a retry
			}
			return fmt.Errorf("stamp identity of %s: %w", inst.Database, err)
		}
		if err := w.store.MarkStamped(ctx, inst.ID); err != nil {
			return err
		}
	}
	return nil
}

// create creates database d from its product's template at d's version.
func (w *workers) create(ctx context.Context, shard *tenantdb.Shard, d catalog.Database) error {
	tpl, err := shard.EnsureTemplate(ctx, d.Product, d.SchemaVersion, func() ([]catalog.Migration, error) {
		return w.store.Migrations(ctx, d.Product, d.SchemaVersion)
	})
	if err != nil {
		return err
	}
	return shard.Create(ctx, d.Name, tpl)
}

// abandonIfShardDown gives up a database being created on a shard that does
// not answer, so that the next attempt can place the installation on
// another shard. The record stays (state dropping) until the sweeper has
// dropped whatever the failed attempt left on the shard.
func (w *workers) abandonIfShardDown(ctx context.Context, shard *tenantdb.Shard, d catalog.Database) {
	if fleet.Probe(ctx, shard) == nil {
		return
	}
	if err := w.store.AbandonDatabase(ctx, d.ID); err != nil {
		w.log.Warn("abandon database", "database", d.Name, "error", err)
	}
}

func (w *workers) shard(ctx context.Context, name string) (*tenantdb.Shard, error) {
	sh, err := w.store.GetShard(ctx, name)
	if err != nil {
		return nil, err
	}
	return w.pools.Shard(sh)
}

// fail marks the tenant failed (when it is still provisioning) and the
// operation failed, in one transaction.
func (w *provisionWorker) fail(ctx context.Context, args ProvisionArgs, cause error) error {
	reason := failureReason(cause)
	return w.store.InTx(ctx, func(tx *catalog.Store) error {
		_, err := tx.Transition(ctx, catalog.TransitionParams{
			TenantID: args.TenantID, Action: "provisioning_failed", Actor: ActorProvisioner, Reason: reason,
			From: []catalog.TenantState{catalog.StateProvisioning}, To: catalog.StateFailed,
		})
		if err != nil && !errors.Is(err, catalog.ErrIllegalTransition) {
			return err
		}
		return tx.FinishOperation(ctx, args.OperationID, catalog.OperationFailed, reason)
	})
}

// all runs fn for every item, limit at a time (0: all at once), and
// returns their errors joined. Unlike errgroup.WithContext, one failure
// cancels none of the others: a shard's restore or a tenant's swap
// stopped halfway would leave more to clean up than one that finished.
func all[T any](limit int, items []T, fn func(T) error) error {
	errs := make([]error, len(items))
	var g errgroup.Group
	if limit > 0 {
		g.SetLimit(limit)
	}
	for i, it := range items {
		g.Go(func() error { errs[i] = fn(it); return nil })
	}
	_ = g.Wait()
	return errors.Join(errs...)
}

func failureReason(err error) string {
	return catalog.Truncate(err.Error(), 1000)
}

// kickRefill asks for a warm-pool refill now that a warm database was taken.
func (w *workers) kickRefill(ctx context.Context) {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return
	}
	if _, err := client.Insert(ctx, RefillArgs{}, refillOpts); err != nil {
		w.log.Warn("queue warm-pool refill", "error", err)
	}
}

type purgeWorker struct {
	river.WorkerDefaults[PurgeArgs]
	*workers
}

func (w *purgeWorker) NextRetry(job *river.Job[PurgeArgs]) time.Time { return w.backoff(job.Attempt) }

// Work drops every database of a deleted tenant, then marks its
// installations and the tenant purged. The tenant stays deleted (and can't
// be undeleted) while it runs; a failed purge leaves it deleted, to be
// purged again by the next sweep or by hand.
func (w *purgeWorker) Work(ctx context.Context, job *river.Job[PurgeArgs]) error {
	args := job.Args
	err := w.purge(ctx, args)
	if err == nil {
		w.log.Info("tenant purged", "tenant_id", args.TenantID, "actor", args.Actor)
		return nil
	}
	if !finalAttempt(err, job.Attempt, job.MaxAttempts) {
		w.log.Warn("purge attempt failed; will retry", "tenant_id", args.TenantID, "error", err)
		return err
	}
	rctx, cancel := recordCtx(ctx)
	defer cancel()
	if ferr := w.store.FinishOperation(rctx, args.OperationID, catalog.OperationFailed, failureReason(err)); ferr != nil {
		return ferr
	}
	return river.JobCancel(err)
}

func (w *purgeWorker) purge(ctx context.Context, args PurgeArgs) error {
	t, err := w.store.GetTenantByID(ctx, args.TenantID)
	if err != nil {
		return err
	}
	switch t.State {
	case catalog.StatePurged:
		return w.store.FinishOperation(ctx, args.OperationID, catalog.OperationSucceeded, "")
	case catalog.StateDeleted:
	default:
		return w.store.FinishOperation(ctx, args.OperationID, catalog.OperationFailed, fmt.Sprintf("tenant is %s, not deleted", t.State))
	}
	// A restore that began before the purge was asked for may be about to
	// bring the tenant back: wait for it rather than drop what it restores.
	if restoring, err := w.store.RestoreRunning(ctx, t.ID); err != nil {
		return err
	} else if restoring {
		return fmt.Errorf("tenant %s is being restored; the purge waits", t.Slug)
	}
	dbs, err := w.store.LiveDatabases(ctx, t.ID)
	if err != nil {
		return err
	}
	for _, d := range dbs {
		shard, err := w.shard(ctx, d.Shard)
		if err != nil {
			return err
		}
		if err := shard.Drop(ctx, d.Name); err != nil {
			return err
		}
		if _, err := w.store.SetDatabaseState(ctx, d.ID, d.State, catalog.DatabaseDropped); err != nil {
			return err
		}
	}
	return w.store.InTx(ctx, func(tx *catalog.Store) error {
		for _, inst := range t.Installations {
			if err := tx.SetInstallationState(ctx, inst.ID, catalog.InstallationPurged); err != nil {
				return err
			}
		}
		if _, err := tx.Transition(ctx, catalog.TransitionParams{
			TenantID: t.ID, Action: "purge", Actor: args.Actor, Reason: args.Reason, RequestID: args.RequestID,
			From: []catalog.TenantState{catalog.StateDeleted}, To: catalog.StatePurged,
		}); err != nil {
			return err
		}
		return tx.FinishOperation(ctx, args.OperationID, catalog.OperationSucceeded, "")
	})
}
