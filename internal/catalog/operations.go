package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

const operationColumns = `id, kind, tenant_id, state, error, created_at, updated_at, finished_at, job_id`

func scanOperation(row pgx.Row) (Operation, error) {
	var o Operation
	err := row.Scan(&o.ID, &o.Kind, &o.TenantID, &o.State, &o.Error, &o.CreatedAt, &o.UpdatedAt, &o.FinishedAt, &o.JobID)
	return o, err
}

// CreateOperation records long-running work about to be enqueued.
func (s *Store) CreateOperation(ctx context.Context, kind string, tenantID *uuid.UUID) (Operation, error) {
	o, err := scanOperation(s.q.QueryRow(ctx, `
		INSERT INTO operations (id, kind, tenant_id) VALUES ($1, $2, $3) RETURNING `+operationColumns,
		uuid.Must(uuid.NewV7()), kind, tenantID))
	if err != nil {
		return Operation{}, fmt.Errorf("create operation: %w", err)
	}
	return o, nil
}

// SetOperationJob records the job that carries an operation out.
func (s *Store) SetOperationJob(ctx context.Context, id uuid.UUID, jobID int64) error {
	_, err := s.q.Exec(ctx, `UPDATE operations SET job_id = $2, updated_at = now() WHERE id = $1`, id, jobID)
	if err != nil {
		return fmt.Errorf("set operation job: %w", err)
	}
	return nil
}

// FinishOperation marks a running operation succeeded or failed. Finishing
// one that already finished changes nothing.
func (s *Store) FinishOperation(ctx context.Context, id uuid.UUID, state OperationState, msg string) error {
	_, err := s.q.Exec(ctx, `
		UPDATE operations SET state = $2, error = $3, updated_at = now(), finished_at = now()
		WHERE id = $1 AND state = 'running'`, id, state, Truncate(msg, 2000))
	if err != nil {
		return fmt.Errorf("finish operation: %w", err)
	}
	return nil
}

// GetOperation returns one operation.
func (s *Store) GetOperation(ctx context.Context, id uuid.UUID) (Operation, error) {
	o, err := scanOperation(s.q.QueryRow(ctx, `SELECT `+operationColumns+` FROM operations WHERE id = $1`, id))
	if isNoRows(err) {
		return Operation{}, NotFound("operation_not_found", "operation %s does not exist", id)
	}
	if err != nil {
		return Operation{}, fmt.Errorf("get operation: %w", err)
	}
	return o, nil
}

// RunningOperation returns the running operation of a kind for a tenant, if any.
func (s *Store) RunningOperation(ctx context.Context, tenantID uuid.UUID, kind string) (Operation, bool, error) {
	o, err := scanOperation(s.q.QueryRow(ctx, `SELECT `+operationColumns+` FROM operations
		WHERE tenant_id = $1 AND kind = $2 AND state = 'running' ORDER BY created_at DESC LIMIT 1`, tenantID, kind))
	if isNoRows(err) {
		return Operation{}, false, nil
	}
	if err != nil {
		return Operation{}, false, fmt.Errorf("running operation: %w", err)
	}
	return o, true, nil
}

// RunningOperations returns the operations still running, oldest first.
func (s *Store) RunningOperations(ctx context.Context, limit int) ([]Operation, error) {
	rows, err := s.q.Query(ctx, `SELECT `+operationColumns+` FROM operations
		WHERE state = 'running' ORDER BY created_at LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("running operations: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Operation, error) { return scanOperation(row) })
}

// Audit appends an audit record.
func (s *Store) Audit(ctx context.Context, e AuditEntry) error {
	_, err := s.q.Exec(ctx, `
		INSERT INTO audit_log (actor, action, target_kind, target_id, from_state, to_state, reason, request_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.Actor, e.Action, e.TargetKind, e.TargetID, e.FromState, e.ToState, e.Reason, e.RequestID)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// ListAudit returns the audit records of one target, oldest first.
func (s *Store) ListAudit(ctx context.Context, kind, id string, limit int) ([]AuditEntry, error) {
	rows, err := s.q.Query(ctx, `
		SELECT id, at, actor, action, target_kind, target_id, from_state, to_state, reason, request_id
		FROM audit_log WHERE target_kind = $1 AND target_id = $2 ORDER BY id LIMIT $3`, kind, id, limit)
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		err := row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.TargetKind, &e.TargetID, &e.FromState, &e.ToState,
			&e.Reason, &e.RequestID)
		return e, err
	})
}

// Changes returns change-log rows with a version above after, in commit
// order. Rows of transactions still committing are not yet numbered and are
// not returned; they will carry a higher version than any returned here.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]Change, error) {
	rows, err := s.q.Query(ctx, `
		SELECT version, entity, entity_id, tenant_id, op, data, committed_at FROM change_log
		WHERE version > $1 ORDER BY version LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read change log: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Change, error) {
		var c Change
		err := row.Scan(&c.Version, &c.Entity, &c.EntityID, &c.TenantID, &c.Op, &c.Data, &c.CommittedAt)
		return c, err
	})
}

// StoredResponse is the response kept for an idempotency key.
type StoredResponse struct {
	Status int
	Body   json.RawMessage
}

// ClaimIdempotencyKey claims key for a request with the given fingerprint
// (a hash of method, path and body). It must run in the transaction that
// performs the request. It returns nil when the key is new (the caller goes
// ahead and calls SaveIdempotentResponse), or the response stored for it.
// A concurrent request with the same key waits here until the first commits
// (then it gets the stored response) or rolls back (then it goes ahead).
func (s *Store) ClaimIdempotencyKey(ctx context.Context, key string, fingerprint []byte) (*StoredResponse, error) {
	if s.tx == nil {
		return nil, fmt.Errorf("claim idempotency key: not in a transaction")
	}
	if len(key) == 0 || len(key) > 255 {
		return nil, Invalid("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
	}
	tag, err := s.q.Exec(ctx, `
		INSERT INTO idempotency_keys (key, fingerprint, status, response) VALUES ($1, $2, 0, 'null')
		ON CONFLICT (key) DO NOTHING`, key, fingerprint)
	if err != nil {
		return nil, fmt.Errorf("claim idempotency key: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil, nil
	}
	var stored StoredResponse
	var fp []byte
	err = s.q.QueryRow(ctx, `SELECT fingerprint, status, response FROM idempotency_keys WHERE key = $1`, key).
		Scan(&fp, &stored.Status, &stored.Body)
	if err != nil {
		return nil, fmt.Errorf("read idempotency key: %w", err)
	}
	if !bytes.Equal(fp, fingerprint) {
		return nil, Invalid("idempotency_key_reused", "Idempotency-Key was already used for a different request")
	}
	return &stored, nil
}

// SaveIdempotentResponse stores the response to replay for key.
func (s *Store) SaveIdempotentResponse(ctx context.Context, key string, status int, body []byte) error {
	_, err := s.q.Exec(ctx, `UPDATE idempotency_keys SET status = $2, response = $3 WHERE key = $1`, key, status, body)
	if err != nil {
		return fmt.Errorf("save idempotent response: %w", err)
	}
	return nil
}

// ForgetIdempotencyKeys deletes keys older than the given number of hours.
func (s *Store) ForgetIdempotencyKeys(ctx context.Context, hours int) (int64, error) {
	tag, err := s.q.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)`, hours)
	if err != nil {
		return 0, fmt.Errorf("forget idempotency keys: %w", err)
	}
	return tag.RowsAffected(), nil
}
