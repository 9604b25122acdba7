package catalog

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Drill states.
const (
	DrillRunning   = "running"
	DrillSucceeded = "succeeded"
	DrillFailed    = "failed"
)

// MaxDrillSample bounds a drill's sample of tenants.
const MaxDrillSample = 10000

// Drill restores a sample of tenants and each involved shard's heartbeat
// database to TargetTime in scratch servers and checks them.
type Drill struct {
	ID         uuid.UUID     `json:"id"`
	Sample     *int          `json:"sample"` // nil: every restorable tenant
	Actor      string        `json:"actor"`
	TargetTime time.Time     `json:"target_time"`
	State      string        `json:"state"`
	Error      string        `json:"error,omitempty"`
	CreatedAt  time.Time     `json:"created_at"`
	FinishedAt *time.Time    `json:"finished_at,omitempty"`
	Results    []DrillResult `json:"results,omitempty"`
}

// DrillResult is one checked database of a drill: a tenant's, or a shard's
// heartbeat database (no tenant). Times are in milliseconds.
type DrillResult struct {
	Shard          string     `json:"shard"`
	Database       string     `json:"database"`
	TenantID       *uuid.UUID `json:"tenant_id,omitempty"`
	Tenant         string     `json:"tenant,omitempty"` // slug
	Tier           *int       `json:"tier,omitempty"`
	OK             bool       `json:"ok"`
	Detail         string     `json:"detail,omitempty"`
	HeartbeatLagMS *int64     `json:"heartbeat_lag_ms,omitempty"`
	RestoreMS      int64      `json:"restore_ms"`
	ReplayMS       int64      `json:"replay_ms"`
	CheckedAt      time.Time  `json:"checked_at"`
}

// DrillTarget is a tenant database a drill restores and checks.
type DrillTarget struct {
	TenantID uuid.UUID
	Tier     int
	Product  string
	Shard    string
	Database string
}

// CreateDrill records a drill of sample tenants (nil: all) to target. One
// drill runs at a time.
func (s *Store) CreateDrill(ctx context.Context, sample *int, actor string, target time.Time) (Drill, error) {
	if sample != nil && (*sample < 1 || *sample > MaxDrillSample) {
		return Drill{}, Invalid("invalid_sample", "a drill samples 1 to %d tenants, or all", MaxDrillSample)
	}
	if actor == "" {
		return Drill{}, Invalid("invalid_actor", "a drill needs an actor")
	}
	var running bool
	if err := s.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM drills WHERE state = 'running')`).Scan(&running); err != nil {
		return Drill{}, fmt.Errorf("look for a running drill: %w", err)
	}
	if running {
		return Drill{}, Conflict("drill_running", "a drill is running; wait for it to finish")
	}
	d := Drill{ID: uuid.New(), Sample: sample, Actor: actor, TargetTime: target.UTC(), State: DrillRunning, Results: []DrillResult{}}
	err := s.q.QueryRow(ctx, `INSERT INTO drills (id, sample, actor, target_time) VALUES ($1, $2, $3, $4) RETURNING created_at`,
		d.ID, sample, actor, d.TargetTime).Scan(&d.CreatedAt)
	if err != nil {
		return Drill{}, fmt.Errorf("create drill: %w", err)
	}
	return d, nil
}

// LastDrillCreated is when the newest drill was created (zero: never).
func (s *Store) LastDrillCreated(ctx context.Context) (time.Time, error) {
	var at *time.Time
	if err := s.q.QueryRow(ctx, `SELECT max(created_at) FROM drills`).Scan(&at); err != nil {
		return time.Time{}, fmt.Errorf("last drill: %w", err)
	}
	if at == nil {
		return time.Time{}, nil
	}
	return *at, nil
}

// backedUpByPlinth holds for a tenant t with a database on a shard Plinth
// backs up: only those are drilled (a managed shard's provider restores its
// own).
const backedUpByPlinth = `EXISTS (SELECT 1 FROM installations i JOIN tenant_databases d ON d.installation_id = i.id
	AND d.state = 'assigned' JOIN shards sh ON sh.name = d.shard AND sh.backups = 'plinth' WHERE i.tenant_id = t.id)`

// DrillSample picks the databases of up to sample tenants (nil: all) that
// were theirs at target and can be restored, those drilled least recently
// first, never drilled before all.
func (s *Store) DrillSample(ctx context.Context, sample *int, target time.Time) ([]DrillTarget, error) {
	return s.drillSample(ctx, sample, target, nil)
}

// DrillTargets returns the databases drill id checks: a sample picked when
// it first runs and kept, so that a drill resumed after its worker died
// checks the same tenants.
func (s *Store) DrillTargets(ctx context.Context, d Drill) ([]DrillTarget, error) {
	var out []DrillTarget
	err := s.InTx(ctx, func(tx *Store) error {
		var ids []uuid.UUID
		if err := tx.q.QueryRow(ctx, `SELECT tenant_ids FROM drills WHERE id = $1 FOR UPDATE`, d.ID).Scan(&ids); err != nil {
			return fmt.Errorf("lock drill: %w", err)
		}
		var err error
		if ids != nil {
			out, err = tx.drillSample(ctx, nil, d.TargetTime, ids)
			return err
		}
		if out, err = tx.drillSample(ctx, d.Sample, d.TargetTime, nil); err != nil {
			return err
		}
		ids = []uuid.UUID{}
		for _, t := range out {
			if !slices.Contains(ids, t.TenantID) {
				ids = append(ids, t.TenantID)
			}
		}
		_, err = tx.q.Exec(ctx, `UPDATE drills SET tenant_ids = $2 WHERE id = $1`, d.ID, ids)
		return err
	})
	return out, err
}

// drillSample is DrillSample, of only the tenants only when it is not nil.
func (s *Store) drillSample(ctx context.Context, sample *int, target time.Time, only []uuid.UUID) ([]DrillTarget, error) {
	rows, err := s.q.Query(ctx, `
		WITH picked AS (
			SELECT t.id, t.tier FROM tenants t
			LEFT JOIN LATERAL (SELECT max(checked_at) AS at FROM drill_results r WHERE r.tenant_id = t.id AND r.ok) last ON true
			WHERE t.state IN ('active', 'suspended', 'deactivated') AND t.created_at < $2 AND `+backedUpByPlinth+`
			  AND ($3::uuid[] IS NULL OR t.id = ANY($3))
			ORDER BY last.at NULLS FIRST, random()
			LIMIT $1)
		SELECT p.id, p.tier, d.product, d.shard, d.name
		FROM picked p JOIN installations i ON i.tenant_id = p.id
		JOIN tenant_databases d ON d.installation_id = i.id AND d.state = 'assigned'
		JOIN installation_stamps st ON st.installation_id = i.id
		JOIN shards sh ON sh.name = d.shard AND sh.backups = 'plinth'
		-- Stamped with the tenant before the target: a warm database
		-- created earlier may have been claimed for it only after.
		WHERE d.created_at < $2 AND i.state = 'ready' AND st.stamped_at < $2
		ORDER BY d.shard, d.name`, sample, target, only)
	if err != nil {
		return nil, fmt.Errorf("drill sample: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DrillTarget, error) {
		var t DrillTarget
		return t, row.Scan(&t.TenantID, &t.Tier, &t.Product, &t.Shard, &t.Database)
	})
	if err != nil {
		return nil, fmt.Errorf("drill sample: %w", err)
	}
	return out, nil
}

// RecordDrillResult records (or, for a drill that resumed, replaces) the
// result of one database.
func (s *Store) RecordDrillResult(ctx context.Context, drillID uuid.UUID, r DrillResult) error {
	_, err := s.q.Exec(ctx, `INSERT INTO drill_results
		(drill_id, shard, database_name, tenant_id, tier, ok, detail, heartbeat_lag_ms, restore_ms, replay_ms)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (drill_id, shard, database_name) DO UPDATE SET ok = excluded.ok, detail = excluded.detail,
			heartbeat_lag_ms = excluded.heartbeat_lag_ms, restore_ms = excluded.restore_ms,
			replay_ms = excluded.replay_ms, checked_at = now()`,
		drillID, r.Shard, r.Database, r.TenantID, r.Tier, r.OK, Truncate(r.Detail, 1000), r.HeartbeatLagMS, r.RestoreMS, r.ReplayMS)
	if err != nil {
		return fmt.Errorf("record drill result: %w", err)
	}
	return nil
}

// FinishDrill ends a running drill: succeeded when every result passed
// and msg is empty, failed otherwise. A finished drill stays as it was.
func (s *Store) FinishDrill(ctx context.Context, id uuid.UUID, msg string) (Drill, error) {
	_, err := s.q.Exec(ctx, `UPDATE drills SET finished_at = now(), error = $2,
		state = CASE WHEN $2 = '' AND NOT EXISTS (SELECT 1 FROM drill_results WHERE drill_id = $1 AND NOT ok)
			THEN 'succeeded' ELSE 'failed' END
		WHERE id = $1 AND state = 'running'`, id, Truncate(msg, 1000))
	if err != nil {
		return Drill{}, fmt.Errorf("finish drill: %w", err)
	}
	return s.GetDrill(ctx, id)
}

// GetDrill returns a drill and its results.
func (s *Store) GetDrill(ctx context.Context, id uuid.UUID) (Drill, error) {
	var d Drill
	err := s.q.QueryRow(ctx, `SELECT id, sample, actor, target_time, state, error, created_at, finished_at
		FROM drills WHERE id = $1`, id).Scan(&d.ID, &d.Sample, &d.Actor, &d.TargetTime, &d.State, &d.Error, &d.CreatedAt, &d.FinishedAt)
	if isNoRows(err) {
		return Drill{}, NotFound("drill_not_found", "drill %s does not exist", id)
	}
	if err != nil {
		return Drill{}, fmt.Errorf("get drill: %w", err)
	}
	rows, err := s.q.Query(ctx, `SELECT r.shard, r.database_name, r.tenant_id, coalesce(t.slug, ''), r.tier, r.ok, r.detail,
			r.heartbeat_lag_ms, r.restore_ms, r.replay_ms, r.checked_at
		FROM drill_results r LEFT JOIN tenants t ON t.id = r.tenant_id
		WHERE r.drill_id = $1 ORDER BY r.shard, r.tenant_id NULLS FIRST, r.database_name`, id)
	if err != nil {
		return Drill{}, fmt.Errorf("get drill results: %w", err)
	}
	d.Results, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (DrillResult, error) {
		var r DrillResult
		return r, row.Scan(&r.Shard, &r.Database, &r.TenantID, &r.Tenant, &r.Tier, &r.OK, &r.Detail,
			&r.HeartbeatLagMS, &r.RestoreMS, &r.ReplayMS, &r.CheckedAt)
	})
	if err != nil {
		return Drill{}, fmt.Errorf("get drill results: %w", err)
	}
	return d, nil
}

// DrillTier is how well the drills cover the restorable tenants of a tier.
type DrillTier struct {
	Tier    int `json:"tier"`
	Tenants int `json:"tenants"`
	// Overdue tenants are older than the window and have no successful
	// drill within it.
	Overdue int `json:"overdue"`
	// OldestSuccess is the oldest of the tier's tenants' last successful
	// drills (nil when a tenant was never drilled successfully).
	OldestSuccess *time.Time `json:"oldest_success"`
}

// OverdueTenant has had no successful drill within the window.
type OverdueTenant struct {
	TenantID    uuid.UUID  `json:"tenant_id"`
	Tenant      string     `json:"tenant"`
	Tier        int        `json:"tier"`
	LastSuccess *time.Time `json:"last_success"`
}

// DrillReport says, per tier, how the drills cover the restorable tenants,
// and lists up to limit tenants without a successful drill within window.
func (s *Store) DrillReport(ctx context.Context, window time.Duration, limit int) ([]DrillTier, []OverdueTenant, error) {
	const lastSuccess = `
		SELECT t.id, t.slug, t.tier, t.created_at, last.at
		FROM tenants t
		LEFT JOIN LATERAL (SELECT max(checked_at) AS at FROM drill_results r WHERE r.tenant_id = t.id AND r.ok) last ON true
		WHERE t.state IN ('active', 'suspended', 'deactivated') AND ` + backedUpByPlinth
	since := time.Now().Add(-window)
	rows, err := s.q.Query(ctx, `WITH l AS (`+lastSuccess+`)
		SELECT tier, count(*), count(*) FILTER (WHERE created_at < $1 AND (at IS NULL OR at < $1)),
			CASE WHEN bool_and(at IS NOT NULL) THEN min(at) END
		FROM l GROUP BY tier ORDER BY tier`, since)
	if err != nil {
		return nil, nil, fmt.Errorf("drill report: %w", err)
	}
	tiers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DrillTier, error) {
		var t DrillTier
		return t, row.Scan(&t.Tier, &t.Tenants, &t.Overdue, &t.OldestSuccess)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("drill report: %w", err)
	}
	rows, err = s.q.Query(ctx, `WITH l AS (`+lastSuccess+`)
		SELECT id, slug, tier, at FROM l WHERE created_at < $1 AND (at IS NULL OR at < $1)
		ORDER BY at NULLS FIRST, tier, slug LIMIT $2`, since, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("drill report: %w", err)
	}
	overdue, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (OverdueTenant, error) {
		var o OverdueTenant
		return o, row.Scan(&o.TenantID, &o.Tenant, &o.Tier, &o.LastSuccess)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("drill report: %w", err)
	}
	return tiers, overdue, nil
}

// ListDrills returns the newest drills, without their results.
func (s *Store) ListDrills(ctx context.Context, limit int) ([]Drill, error) {
	rows, err := s.q.Query(ctx, `SELECT id, sample, actor, target_time, state, error, created_at, finished_at
		FROM drills ORDER BY created_at DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list drills: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Drill, error) {
		var d Drill
		return d, row.Scan(&d.ID, &d.Sample, &d.Actor, &d.TargetTime, &d.State, &d.Error, &d.CreatedAt, &d.FinishedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("list drills: %w", err)
	}
	return out, nil
}

// MarkStamped records that the installation's database carries its
// tenant's identity (the first time only).
func (s *Store) MarkStamped(ctx context.Context, installationID uuid.UUID) error {
	return s.markStampedAt(ctx, installationID, time.Time{})
}

// markStampedAt is MarkStamped with the moment of the stamp (zero: now).
func (s *Store) markStampedAt(ctx context.Context, installationID uuid.UUID, at time.Time) error {
	_, err := s.q.Exec(ctx, `INSERT INTO installation_stamps (installation_id, stamped_at) VALUES ($1, coalesce($2, now()))
		ON CONFLICT DO NOTHING`, installationID, orNow(at))
	if err != nil {
		return fmt.Errorf("mark installation stamped: %w", err)
	}
	return nil
}
