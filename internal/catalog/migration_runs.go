package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Migration run states.
const (
	RunRunning              = "running"
	RunPaused               = "paused"
	RunSucceeded            = "succeeded"
	RunFinishedWithFailures = "finished_with_failures"
	RunStopped              = "stopped"
)

// MigrationRun brings every tenant database of a product to a version.
type MigrationRun struct {
	ID              uuid.UUID      `json:"id"`
	Product         string         `json:"product"`
	TargetVersion   int64          `json:"target_version"`
	Concurrency     int            `json:"concurrency"`
	Canary          int            `json:"canary"`
	MaxFailureRatio float64        `json:"max_failure_ratio"`
	State           string         `json:"state"`
	Error           string         `json:"error,omitempty"`
	CreatedAt       time.Time      `json:"created_at"`
	UpdatedAt       time.Time      `json:"updated_at"`
	FinishedAt      *time.Time     `json:"finished_at,omitempty"`
	Tasks           map[string]int `json:"tasks"` // count by state
	Total           int            `json:"total"`
}

// MigrationTask is one tenant database of a run.
type MigrationTask struct {
	DatabaseID  uuid.UUID `json:"database_id"`
	TenantID    uuid.UUID `json:"tenant_id"`
	Database    string    `json:"database"`
	Shard       string    `json:"shard"`
	Wave        int       `json:"wave"`
	State       string    `json:"state"`
	FromVersion int64     `json:"from_version"`
	Attempts    int       `json:"attempts"`
	Error       string    `json:"error,omitempty"`
}

// CreateRunParams starts a run.
type CreateRunParams struct {
	Product string
	// To is the target version (0: the product's current version).
	To              int64
	Concurrency     int
	Canary          int
	MaxFailureRatio float64
	Actor           string
	RequestID       string
}

// CreateMigrationRun records a run and one task per tenant database of the
// product below the target version: the Canary least critical tenants
// first (wave 0), then the rest by tier, least critical first (waves 1–4).
func (s *Store) CreateMigrationRun(ctx context.Context, p CreateRunParams) (MigrationRun, error) {
	switch {
	case p.Concurrency < 1 || p.Concurrency > 256:
		return MigrationRun{}, Invalid("invalid_concurrency", "concurrency must be between 1 and 256")
	case p.Canary < 0 || p.Canary > 10_000:
		return MigrationRun{}, Invalid("invalid_canary", "canary must be between 0 and 10000")
	case !(p.MaxFailureRatio >= 0 && p.MaxFailureRatio <= 1):
		return MigrationRun{}, Invalid("invalid_max_failure_ratio", "max_failure_ratio must be between 0 and 1")
	case p.To < 0:
		return MigrationRun{}, Invalid("invalid_version", "to must be a version (a positive number)")
	}
	var run MigrationRun
	err := s.InTx(ctx, func(tx *Store) error {
		prod, err := tx.GetProduct(ctx, p.Product)
		if err != nil {
			return err
		}
		to := p.To
		if to == 0 {
			to = prod.CurrentVersion
		}
		if to == 0 || to > prod.CurrentVersion {
			return Invalid("invalid_version", "product %s has versions up to %d; cannot migrate to %d", p.Product, prod.CurrentVersion, to)
		}
		var exists bool
		if err := tx.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM product_migrations WHERE product = $1 AND version = $2)`,
			p.Product, to).Scan(&exists); err != nil {
			return fmt.Errorf("check version: %w", err)
		}
		if !exists {
			return Invalid("invalid_version", "product %s has no migration %d", p.Product, to)
		}
		id := uuid.Must(uuid.NewV7())
		_, err = tx.q.Exec(ctx, `
			INSERT INTO migration_runs (id, product, target_version, concurrency, canary, max_failure_ratio)
			VALUES ($1, $2, $3, $4, $5, $6)`, id, p.Product, to, p.Concurrency, p.Canary, p.MaxFailureRatio)
		if err != nil { // migration_runs_one_active: mapError says migration_in_progress
			return fmt.Errorf("insert migration run: %w", err)
		}
		// Waves: the canaries, then tier 3 … tier 0. Within a wave, by tenant ID
		// (a stable, arbitrary order).
		if _, err := tx.q.Exec(ctx, `
			INSERT INTO migration_tasks (run_id, database_id, tenant_id, wave, from_version)
			SELECT $1, d.id, i.tenant_id,
			       CASE WHEN row_number() OVER (ORDER BY t.tier DESC, t.id) <= $4 THEN 0 ELSE 4 - t.tier END,
			       d.schema_version
			FROM tenant_databases d
			JOIN installations i ON i.id = d.installation_id
			JOIN tenants t ON t.id = i.tenant_id
			WHERE d.product = $2 AND d.state = 'assigned' AND d.schema_version < $3
			  AND t.state NOT IN ('purged')`, id, p.Product, to, p.Canary); err != nil {
			return fmt.Errorf("insert migration tasks: %w", err)
		}
		if err := tx.Audit(ctx, AuditEntry{Actor: p.Actor, Action: "product.migrate", TargetKind: "product", TargetID: p.Product,
			ToState: fmt.Sprintf("v%d", to), RequestID: p.RequestID}); err != nil {
			return err
		}
		run, err = tx.GetMigrationRun(ctx, id)
		return err
	})
	if err != nil {
		return MigrationRun{}, mapError(err)
	}
	return run, nil
}

const runColumns = `id, product, target_version, concurrency, canary, max_failure_ratio, state, error, created_at, updated_at, finished_at`

// GetMigrationRun returns a run with its task counts.
func (s *Store) GetMigrationRun(ctx context.Context, id uuid.UUID) (MigrationRun, error) {
	var r MigrationRun
	err := s.q.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs WHERE id = $1`, id).Scan(&r.ID, &r.Product,
		&r.TargetVersion, &r.Concurrency, &r.Canary, &r.MaxFailureRatio, &r.State, &r.Error, &r.CreatedAt, &r.UpdatedAt, &r.FinishedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, NotFound("migration_run_not_found", "migration run %s does not exist", id)
	}
	if err != nil {
		return r, fmt.Errorf("get migration run: %w", err)
	}
	r.Tasks = map[string]int{"pending": 0, "running": 0, "done": 0, "failed": 0, "skipped": 0}
	rows, err := s.q.Query(ctx, `SELECT state, count(*) FROM migration_tasks WHERE run_id = $1 GROUP BY state`, id)
	if err != nil {
		return r, fmt.Errorf("count migration tasks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return r, err
		}
		r.Tasks[st] = n
		r.Total += n
	}
	return r, rows.Err()
}

// ListMigrationRuns returns a product's runs, newest first.
func (s *Store) ListMigrationRuns(ctx context.Context, product string) ([]MigrationRun, error) {
	rows, err := s.q.Query(ctx, `SELECT id FROM migration_runs WHERE product = $1 ORDER BY created_at DESC LIMIT 100`, product)
	if err != nil {
		return nil, fmt.Errorf("list migration runs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	runs := make([]MigrationRun, 0, len(ids))
	for _, id := range ids {
		r, err := s.GetMigrationRun(ctx, id)
		if err != nil {
			return nil, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// MigrationTasks returns a run's tasks in state (all when empty), at most limit.
func (s *Store) MigrationTasks(ctx context.Context, run uuid.UUID, state string, limit int) ([]MigrationTask, error) {
	rows, err := s.q.Query(ctx, `
		SELECT k.database_id, k.tenant_id, d.name, d.shard, k.wave, k.state, k.from_version, k.attempts, k.error
		FROM migration_tasks k JOIN tenant_databases d ON d.id = k.database_id
		WHERE k.run_id = $1 AND ($2 = '' OR k.state = $2)
		ORDER BY k.wave, k.tenant_id LIMIT $3`, run, state, limit)
	if err != nil {
		return nil, fmt.Errorf("list migration tasks: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (MigrationTask, error) {
		var t MigrationTask
		err := row.Scan(&t.DatabaseID, &t.TenantID, &t.Database, &t.Shard, &t.Wave, &t.State, &t.FromVersion, &t.Attempts, &t.Error)
		return t, err
	})
}

// ClaimMigrationTasks marks up to n pending tasks of the earliest wave that
// still has work as running and returns them; none while an earlier task of
// that wave is still running elsewhere is fine. A later wave starts only
// when every earlier one is finished.
func (s *Store) ClaimMigrationTasks(ctx context.Context, run uuid.UUID, n int) (tasks []MigrationTask, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		tasks, err = tx.claimMigrationTasks(ctx, run, n)
		return err
	})
	return tasks, err
}

// asyncCommit lets the transaction commit without waiting for its WAL to
// reach disk. Only for records a crash may lose: a task claimed or
// finished whose record is lost is simply run again, and migrations are
// idempotent per version.
func (s *Store) asyncCommit(ctx context.Context) error {
	if _, err := s.q.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
		return fmt.Errorf("asynchronous commit: %w", err)
	}
	return nil
}

func (s *Store) claimMigrationTasks(ctx context.Context, run uuid.UUID, n int) ([]MigrationTask, error) {
	if err := s.asyncCommit(ctx); err != nil {
		return nil, err
	}
	rows, err := s.q.Query(ctx, `
		WITH wave AS (
			SELECT min(wave) AS w FROM migration_tasks WHERE run_id = $1 AND state IN ('pending', 'running')
		), next AS (
			SELECT k.database_id FROM migration_tasks k, wave
			WHERE k.run_id = $1 AND k.state = 'pending' AND k.wave = wave.w
			ORDER BY k.tenant_id LIMIT $2 FOR UPDATE SKIP LOCKED
		)
		UPDATE migration_tasks k SET state = 'running', attempts = attempts + 1, updated_at = now()
		FROM next, tenant_databases d
		WHERE k.run_id = $1 AND k.database_id = next.database_id AND d.id = k.database_id
		RETURNING k.database_id, k.tenant_id, d.name, d.shard, k.wave, k.state, k.from_version, k.attempts, k.error`, run, n)
	if err != nil {
		return nil, fmt.Errorf("claim migration tasks: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (MigrationTask, error) {
		var t MigrationTask
		err := row.Scan(&t.DatabaseID, &t.TenantID, &t.Database, &t.Shard, &t.Wave, &t.State, &t.FromVersion, &t.Attempts, &t.Error)
		return t, err
	})
}

// FinishMigrationTask records a task's result; when it succeeded, the
// database's schema version moves to version in the same transaction.
func (s *Store) FinishMigrationTask(ctx context.Context, run, database uuid.UUID, version int64, taskErr error) error {
	return s.InTx(ctx, func(tx *Store) error {
		if err := tx.asyncCommit(ctx); err != nil {
			return err
		}
		state, msg := "done", ""
		if taskErr != nil {
			state, msg = "failed", Truncate(taskErr.Error(), 2000)
		}
		tag, err := tx.q.Exec(ctx, `
			UPDATE migration_tasks SET state = $3, error = $4, updated_at = now()
			WHERE run_id = $1 AND database_id = $2 AND state = 'running'`, run, database, state, msg)
		if err != nil {
			return fmt.Errorf("finish migration task: %w", err)
		}
		if tag.RowsAffected() == 0 || taskErr != nil {
			return nil // reset meanwhile (the run resumed elsewhere): its new attempt records it
		}
		_, err = tx.q.Exec(ctx, `
			UPDATE tenant_databases SET schema_version = $2, updated_at = now()
			WHERE id = $1 AND schema_version < $2`, database, version)
		if err != nil {
			return fmt.Errorf("record schema version: %w", err)
		}
		return nil
	})
}

// ResetRunningTasks puts a run's running tasks back to pending: their
// worker died (migrations are idempotent per version, so running one again
// applies what is missing and nothing twice).
func (s *Store) ResetRunningTasks(ctx context.Context, run uuid.UUID) (int64, error) {
	tag, err := s.q.Exec(ctx, `UPDATE migration_tasks SET state = 'pending', updated_at = now() WHERE run_id = $1 AND state = 'running'`, run)
	if err != nil {
		return 0, fmt.Errorf("reset migration tasks: %w", err)
	}
	return tag.RowsAffected(), nil
}

// SetRunState moves a run from one of from to to (finishing it when to is
// final; the remaining tasks are then skipped).
func (s *Store) SetRunState(ctx context.Context, id uuid.UUID, from []string, to, reason string) (MigrationRun, error) {
	var r MigrationRun
	err := s.InTx(ctx, func(tx *Store) error {
		final := to != RunRunning && to != RunPaused
		tag, err := tx.q.Exec(ctx, `
			UPDATE migration_runs SET state = $2, error = $3, updated_at = now(),
				finished_at = CASE WHEN $4 THEN now() END
			WHERE id = $1 AND state = ANY($5)`, id, to, reason, final, from)
		if err != nil {
			return fmt.Errorf("set migration run state: %w", err)
		}
		cur, err := tx.GetMigrationRun(ctx, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return Conflict("illegal_transition", "migration run %s is %s", id, cur.State)
		}
		if final {
			if _, err := tx.q.Exec(ctx, `UPDATE migration_tasks SET state = 'skipped', updated_at = now()
				WHERE run_id = $1 AND state IN ('pending', 'running')`, id); err != nil {
				return fmt.Errorf("skip migration tasks: %w", err)
			}
			cur, err = tx.GetMigrationRun(ctx, id)
		}
		r = cur
		return err
	})
	return r, mapError(err)
}

// FailedCanaries counts a run's failed canary tasks.
func (s *Store) FailedCanaries(ctx context.Context, run uuid.UUID) (int, error) {
	var n int
	if err := s.q.QueryRow(ctx, `SELECT count(*) FROM migration_tasks WHERE run_id = $1 AND wave = 0 AND state = 'failed'`,
		run).Scan(&n); err != nil {
		return 0, fmt.Errorf("count failed canaries: %w", err)
	}
	return n, nil
}
