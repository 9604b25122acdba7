package provision

import (
	"context"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// Operation kinds.
const (
	OperationProvision = "provision"
	OperationPurge     = "purge"
)

// Service starts lifecycle workflows: it records each request in the
// catalog and enqueues its job in the same transaction, so that a request
// is either fully accepted (and will be carried out) or not at all.
type Service struct {
	cfg   Config
	river *river.Client[pgx.Tx]
}

// NewService returns a Service that enqueues jobs with client (an inserter
// or a worker client).
func NewService(client *river.Client[pgx.Tx], cfg Config) *Service {
	return &Service{cfg: cfg.withDefaults(), river: client}
}

// CreateRequest asks for a new tenant.
type CreateRequest struct {
	catalog.CreateTenantParams
	Actor     string
	RequestID string
}

// CreateTenant records a tenant in state provisioning and enqueues its
// provisioning. st may be bound to a transaction (for idempotency keys); the
// work joins it.
func (s *Service) CreateTenant(ctx context.Context, st *catalog.Store, req CreateRequest) (catalog.Tenant, catalog.Operation, error) {
	var t catalog.Tenant
	var op catalog.Operation
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		if t, err = tx.CreateTenant(ctx, req.CreateTenantParams); err != nil {
			return err
		}
		if err := tx.Audit(ctx, catalog.AuditEntry{
			Actor: req.Actor, Action: "tenant.create", TargetKind: "tenant", TargetID: t.ID.String(),
			ToState: string(t.State), RequestID: req.RequestID,
		}); err != nil {
			return err
		}
		op, err = s.enqueue(ctx, tx, OperationProvision, t, ProvisionArgs{TenantID: t.ID})
		return err
	})
	return t, op, err
}

// ActRequest asks for a lifecycle action on a tenant named by slug or ID.
type ActRequest struct {
	Tenant    string
	Action    catalog.Action
	Reason    string
	Actor     string
	RequestID string
}

// Act carries out a lifecycle action. Actions that only change the catalog
// (suspend, resume, deactivate, delete, undelete) complete in one
// transaction and return no operation; purge and retry enqueue a job and
// return its operation.
func (s *Service) Act(ctx context.Context, st *catalog.Store, req ActRequest) (catalog.Tenant, *catalog.Operation, error) {
	var t catalog.Tenant
	var op *catalog.Operation
	err := st.InTx(ctx, func(tx *catalog.Store) error {
		var err error
		t, err = tx.GetTenant(ctx, req.Tenant)
		if err != nil {
			return err
		}
		if !slices.Contains(catalog.ActionSources[req.Action], t.State) {
			return catalog.Conflict("illegal_transition", "cannot %s tenant %s: it is %s", req.Action, t.Slug, t.State)
		}
		tp := catalog.TransitionParams{
			TenantID: t.ID, Action: string(req.Action), From: catalog.ActionSources[req.Action],
			Reason: req.Reason, Actor: req.Actor, RequestID: req.RequestID, Retention: s.cfg.Retention,
		}
		switch req.Action {
		case catalog.ActionSuspend:
			tp.To = catalog.StateSuspended
		case catalog.ActionResume:
			tp.To = catalog.StateActive
		case catalog.ActionDeactivate:
			tp.To = catalog.StateDeactivated
		case catalog.ActionDelete:
			tp.To = catalog.StateDeleted
		case catalog.ActionUndelete:
			if _, running, err := tx.RunningOperation(ctx, t.ID, OperationPurge); err != nil {
				return err
			} else if running {
				return catalog.Conflict("purge_in_progress", "cannot undelete tenant %s: it is being purged", t.Slug)
			}
			// A purge that failed halfway may have dropped some databases:
			// such a tenant cannot come back to life, only be purged again.
			if t.StateBeforeDelete != catalog.StateFailed {
				for _, in := range t.Installations {
					if in.DatabaseID == nil {
						return catalog.Conflict("purge_incomplete",
							"cannot undelete tenant %s: a purge already dropped its %s database; purge it again", t.Slug, in.Product)
					}
				}
			}
			tp.To = t.StateBeforeDelete
		case catalog.ActionRetry:
			tp.To = catalog.StateProvisioning
			if t, err = tx.Transition(ctx, tp); err != nil {
				return err
			}
			o, err := s.enqueue(ctx, tx, OperationProvision, t, ProvisionArgs{TenantID: t.ID})
			op = &o
			return err
		case catalog.ActionPurge:
			op, err = s.purge(ctx, tx, t, req)
			return err
		default:
			return catalog.Invalid("invalid_action", "unknown action %q", req.Action)
		}
		t, err = tx.Transition(ctx, tp)
		return err
	})
	return t, op, err
}

// purge enqueues the purge of a deleted tenant, or returns the purge
// already running.
func (s *Service) purge(ctx context.Context, tx *catalog.Store, t catalog.Tenant, req ActRequest) (*catalog.Operation, error) {
	if strings.TrimSpace(req.Reason) == "" {
		return nil, catalog.Invalid("reason_required", "purging drops the tenant's databases: give a reason")
	}
	if len(req.Reason) > 1000 {
		return nil, catalog.Invalid("invalid_reason", "reason must be at most 1000 characters")
	}
	if op, running, err := tx.RunningOperation(ctx, t.ID, OperationPurge); err != nil || running {
		return &op, err
	}
	if restoring, err := tx.RestoreRunning(ctx, t.ID); err != nil {
		return nil, err
	} else if restoring {
		return nil, catalog.Conflict("restore_running", "a restore of tenant %s is running; purge it once the restore has finished", t.Slug)
	}
	if err := tx.Audit(ctx, catalog.AuditEntry{
		Actor: req.Actor, Action: "tenant.purge_requested", TargetKind: "tenant", TargetID: t.ID.String(),
		FromState: string(t.State), Reason: req.Reason, RequestID: req.RequestID,
	}); err != nil {
		return nil, err
	}
	op, err := s.enqueue(ctx, tx, OperationPurge, t, PurgeArgs{
		TenantID: t.ID, Actor: req.Actor, Reason: req.Reason, RequestID: req.RequestID,
	})
	return &op, err
}

// enqueue records an operation and inserts its job in tx.
func (s *Service) enqueue(ctx context.Context, tx *catalog.Store, kind string, t catalog.Tenant, args river.JobArgs) (catalog.Operation, error) {
	op, err := tx.CreateOperation(ctx, kind, &t.ID)
	if err != nil {
		return catalog.Operation{}, err
	}
	switch a := args.(type) {
	case ProvisionArgs:
		a.OperationID = op.ID
		args = a
	case PurgeArgs:
		a.OperationID = op.ID
		args = a
	}
	res, err := s.river.InsertTx(ctx, tx.Tx(), args, &river.InsertOpts{MaxAttempts: s.cfg.MaxAttempts})
	if err != nil {
		return catalog.Operation{}, err
	}
	if err := tx.SetOperationJob(ctx, op.ID, res.Job.ID); err != nil {
		return catalog.Operation{}, err
	}
	op.JobID = &res.Job.ID
	return op, nil
}
