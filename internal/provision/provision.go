// Package provision carries out tenant lifecycle workflows as durable River
// jobs on the control database: provisioning a tenant's databases (claimed
// from a warm pool or created from a product template), purging them, and
// the periodic maintenance around them (shard health, warm-pool refills,
// sweeping abandoned databases and stuck operations, purging tenants whose
// retention ended).
//
// Every step records its intent in the catalog before it acts on a shard
// and is idempotent, so a worker killed at any point resumes where it was:
// no orphaned database, no installation without one, no tenant stuck in
// provisioning.
package provision

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
)

// Defaults. River's own defaults suit long jobs; provisioning is short, so
// failures surface and stuck jobs are rescued sooner.
const (
	WorkersDefault        = 10
	MaxAttemptsDefault    = 8
	RetryBaseDefault      = time.Second
	RetryMaxDefault       = time.Minute
	JobTimeoutDefault     = 2 * time.Minute
	RescueAfterDefault    = 3 * time.Minute
	HealthIntervalDefault = 10 * time.Second
	RefillIntervalDefault = 30 * time.Second
	SweepIntervalDefault  = time.Minute
	AbandonAfterDefault   = 30 * time.Minute // well past the refill job's timeout
	RetentionDefault      = 30 * 24 * time.Hour
	// ChangeRetentionDefault is how long change-log rows are kept: a feed
	// reader away longer than this reloads from the snapshot.
	ChangeRetentionDefault = 7 * 24 * time.Hour
	FetchCooldownDefault   = time.Millisecond
)

// Config configures provisioning. Zero values take the defaults above.
type Config struct {
	Store  *catalog.Store
	Pools  *fleet.Pools
	Logger *slog.Logger

	// Workers is how many jobs a worker process runs at once.
	Workers int
	// MaxAttempts is how often a provisioning or purge job runs before the
	// operation fails; RetryBase doubles per attempt up to RetryMax.
	MaxAttempts int
	RetryBase   time.Duration
	RetryMax    time.Duration
	// JobTimeout bounds one attempt; RescueAfter is when River retries a job
	// whose worker died (it must exceed JobTimeout).
	JobTimeout  time.Duration
	RescueAfter time.Duration
	// Maintenance intervals.
	HealthInterval time.Duration
	RefillInterval time.Duration
	SweepInterval  time.Duration
	// UnhealthyAfter is how many consecutive failed probes mark a shard unhealthy.
	UnhealthyAfter int
	// AbandonAfter is how long a warm database may stay in creating before
	// the sweeper considers its worker dead and drops it.
	AbandonAfter time.Duration
	// Retention is how long a deleted tenant's data is kept before purging.
	Retention time.Duration
	// ChangeRetention is how long the change log keeps a change.
	ChangeRetention time.Duration
	// ReplacedRetention is how long a database a restore replaced is kept
	// (the undo window) before the sweeper drops it; by default the
	// backups' retention, past which no restore could reach before it.
	ReplacedRetention time.Duration
	// FetchCooldown is the least time between River fetches; small, so a
	// new job starts within milliseconds of its insert.
	FetchCooldown time.Duration
	// Restorer restores tenants from the shards' backups (nil: restores are
	// refused). Scratch restores go under ScratchDir (default: a directory
	// of the system's temporary one); the shards' OS user must be able to
	// enter it.
	Restorer   Restorer
	ScratchDir string
	// Backups takes the scheduled backups, BackupSchedule apart (default
	// backup.DefaultSchedule), checked each BackupCheckInterval; none are
	// scheduled without it.
	Backups             Backups
	BackupSchedule      backup.Schedule
	BackupCheckInterval time.Duration
	// Drills (run only with a Restorer): shards' heartbeats are stamped
	// each HeartbeatInterval; a drill of DrillSample tenants starts when
	// none started within DrillInterval, and holds the restored heartbeat
	// to DrillRPO.
	// DrillDueInterval is how often a worker checks whether a drill is due.
	HeartbeatInterval time.Duration
	DrillDueInterval  time.Duration
	DrillInterval     time.Duration
	DrillSample       int
	DrillRPO          time.Duration
}

func (c Config) withDefaults() Config {
	c.Workers = cmp.Or(c.Workers, WorkersDefault)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, MaxAttemptsDefault)
	c.RetryBase = cmp.Or(c.RetryBase, RetryBaseDefault)
	c.RetryMax = cmp.Or(c.RetryMax, RetryMaxDefault)
	c.JobTimeout = cmp.Or(c.JobTimeout, JobTimeoutDefault)
	c.RescueAfter = cmp.Or(c.RescueAfter, max(RescueAfterDefault, c.JobTimeout+time.Minute))
	c.HealthInterval = cmp.Or(c.HealthInterval, HealthIntervalDefault)
	c.RefillInterval = cmp.Or(c.RefillInterval, RefillIntervalDefault)
	c.SweepInterval = cmp.Or(c.SweepInterval, SweepIntervalDefault)
	c.UnhealthyAfter = cmp.Or(c.UnhealthyAfter, fleet.UnhealthyAfterDefault)
	c.AbandonAfter = cmp.Or(c.AbandonAfter, AbandonAfterDefault)
	c.Retention = cmp.Or(c.Retention, RetentionDefault)
	c.ChangeRetention = cmp.Or(c.ChangeRetention, ChangeRetentionDefault)
	c.ReplacedRetention = cmp.Or(c.ReplacedRetention, time.Duration(backup.RetentionDaysDefault)*24*time.Hour)
	c.FetchCooldown = cmp.Or(c.FetchCooldown, FetchCooldownDefault)
	c.ScratchDir = cmp.Or(c.ScratchDir, filepath.Join(os.TempDir(), "plinth-restore"))
	if c.BackupSchedule == (backup.Schedule{}) {
		c.BackupSchedule = backup.DefaultSchedule
	}
	c.BackupCheckInterval = cmp.Or(c.BackupCheckInterval, time.Minute)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, HeartbeatIntervalDefault)
	c.DrillDueInterval = cmp.Or(c.DrillDueInterval, time.Hour)
	c.DrillInterval = cmp.Or(c.DrillInterval, DrillIntervalDefault)
	c.DrillSample = cmp.Or(c.DrillSample, DrillSampleDefault)
	c.DrillRPO = cmp.Or(c.DrillRPO, DrillRPODefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Queues.
const (
	queueLifecycle   = river.QueueDefault
	queueMaintenance = "maintenance"
)

// ProvisionArgs is the job that gives a tenant its databases.
type ProvisionArgs struct {
	TenantID    uuid.UUID `json:"tenant_id"`
	OperationID uuid.UUID `json:"operation_id"`
}

// Kind implements river.JobArgs.
func (ProvisionArgs) Kind() string { return "plinth.provision_tenant" }

// PurgeArgs is the job that drops a deleted tenant's databases.
type PurgeArgs struct {
	TenantID    uuid.UUID `json:"tenant_id"`
	OperationID uuid.UUID `json:"operation_id"`
	Actor       string    `json:"actor"`
	Reason      string    `json:"reason"`
	RequestID   string    `json:"request_id,omitempty"`
}

// Kind implements river.JobArgs.
func (PurgeArgs) Kind() string { return "plinth.purge_tenant" }

// HealthArgs is the periodic shard health check.
type HealthArgs struct{}

// Kind implements river.JobArgs.
func (HealthArgs) Kind() string { return "plinth.check_shards" }

// RefillArgs fills warm pools up to their target sizes.
type RefillArgs struct{}

// Kind implements river.JobArgs.
func (RefillArgs) Kind() string { return "plinth.refill_warm_pools" }

// SweepArgs is the periodic clean-up: drops abandoned databases, fails
// operations whose job ended without finishing them, purges expired tenants.
type SweepArgs struct{}

// Kind implements river.JobArgs.
func (SweepArgs) Kind() string { return "plinth.sweep" }

// Migrate creates or updates River's tables in the control database, under
// an advisory lock so that processes starting together migrate once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate river: %w", err)
	}
	defer conn.Release()
	const key = 7083526355624559 // arbitrary, distinct from the catalog's
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		return fmt.Errorf("migrate river: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key) }()
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: quiet(logger)})
	if err != nil {
		return fmt.Errorf("migrate river: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate river: %w", err)
	}
	return nil
}

// quiet keeps River's own logging to warnings and errors.
func quiet(logger *slog.Logger) *slog.Logger {
	if logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(levelFilter{logger.Handler(), slog.LevelWarn})
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}

// NewInserter returns a River client that only inserts jobs (for processes
// that accept requests but do not run workers).
func NewInserter(pool *pgxpool.Pool, cfg Config) (*river.Client[pgx.Tx], error) {
	cfg = cfg.withDefaults()
	// FetchCooldown also paces this client's insert notifications: keep it
	// as short as the workers', so they hear of each new job at once.
	return river.NewClient(riverpgxv5.New(pool), &river.Config{
		Logger: quiet(cfg.Logger), MaxAttempts: cfg.MaxAttempts, FetchCooldown: cfg.FetchCooldown,
	})
}

// NewWorker returns a River client that runs the lifecycle workers and the
// periodic maintenance jobs. Start it with Start and stop it with Stop.
func NewWorker(pool *pgxpool.Pool, cfg Config) (*river.Client[pgx.Tx], error) {
	cfg = cfg.withDefaults()
	if cfg.Store == nil || cfg.Pools == nil {
		return nil, fmt.Errorf("provision: Store and Pools are required")
	}
	w := &workers{cfg: cfg, store: cfg.Store, pools: cfg.Pools, log: cfg.Logger}
	ws := river.NewWorkers()
	river.AddWorker(ws, &provisionWorker{workers: w})
	river.AddWorker(ws, &purgeWorker{workers: w})
	river.AddWorker(ws, &healthWorker{workers: w})
	river.AddWorker(ws, &refillWorker{workers: w})
	river.AddWorker(ws, &sweepWorker{workers: w})
	river.AddWorker(ws, &migrateWorker{workers: w})
	river.AddWorker(ws, &restoreWorker{workers: w})
	river.AddWorker(ws, &drillWorker{workers: w})
	river.AddWorker(ws, &drillDueWorker{workers: w})
	river.AddWorker(ws, &backupDueWorker{workers: w})
	river.AddWorker(ws, &backupWorker{workers: w})
	maintenance := &river.InsertOpts{Queue: queueMaintenance, MaxAttempts: 1}
	periodic := func(every time.Duration, args river.JobArgs, opts *river.InsertOpts) *river.PeriodicJob {
		return river.NewPeriodicJob(river.PeriodicInterval(every),
			func() (river.JobArgs, *river.InsertOpts) { return args, opts },
			&river.PeriodicJobOpts{RunOnStart: true})
	}
	return river.NewClient(riverpgxv5.New(pool), &river.Config{
		Logger:               quiet(cfg.Logger),
		Workers:              ws,
		MaxAttempts:          cfg.MaxAttempts,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueAfter,
		FetchCooldown:        cfg.FetchCooldown,
		FetchPollInterval:    time.Second,
		Queues: map[string]river.QueueConfig{
			queueLifecycle:   {MaxWorkers: cfg.Workers},
			queueMaintenance: {MaxWorkers: 2},
		},
		PeriodicJobs: []*river.PeriodicJob{
			periodic(cfg.HealthInterval, HealthArgs{}, maintenance),
			periodic(cfg.RefillInterval, RefillArgs{}, refillOpts), // one refill at a time
			periodic(cfg.SweepInterval, SweepArgs{}, maintenance),
			periodic(cfg.DrillDueInterval, DrillDueArgs{}, refillOpts),
			periodic(cfg.BackupCheckInterval, BackupDueArgs{}, refillOpts),
		},
	})
}

// refillOpts keeps refills (periodic or on demand), drill checks and
// backup checks each to one waiting or running at a time (unique by kind).
var refillOpts = &river.InsertOpts{
	Queue:       queueMaintenance,
	MaxAttempts: 1,
	UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning, rivertype.JobStateScheduled,
	}},
}
