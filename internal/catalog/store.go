package catalog

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Querier is what the store needs from a pool or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Store reads and writes the catalog in the control database. A Store is
// bound either to the pool or, inside InTx, to one transaction; its methods
// work the same on both.
type Store struct {
	pool *pgxpool.Pool
	q    Querier
	tx   pgx.Tx
}

// New returns a Store on pool. The schema must be migrated (Migrate).
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, q: pool}
}

// Pool returns the control database pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Tx returns the transaction the store is bound to, or nil.
func (s *Store) Tx() pgx.Tx { return s.tx }

// InTx runs fn with a Store bound to a new transaction, committing when fn
// returns nil. Called on a Store already in a transaction, it runs fn in that
// same transaction.
func (s *Store) InTx(ctx context.Context, fn func(tx *Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := fn(&Store{pool: s.pool, q: tx, tx: tx}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return mapError(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// Migrate brings the control database schema up to date. It holds a
// Postgres advisory lock while it runs, so that processes starting together
// migrate once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	sub, err := fs.Sub(migrationFS, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
		goose.WithTableName("plinth_schema_migrations"),
	)
	if err != nil {
		return fmt.Errorf("catalog migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate control database: %w", err)
	}
	for _, r := range results {
		logger.Info("migrated control database", "version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

// Postgres error codes the store maps to domain errors.
const (
	pgUniqueViolation     = "23505"
	pgForeignKeyViolation = "23503"
	pgCheckViolation      = "23514"
	pgIllegalTransition   = "PL409" // raised by tenants_check_transition
)

// mapError turns Postgres constraint errors into domain errors with stable
// codes. The Go code checks most rules first to give a precise message; this
// is the backstop for races (two creates of one slug) and anything missed.
func mapError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	var e *Error
	switch pgErr.Code {
	case pgUniqueViolation:
		switch pgErr.ConstraintName {
		case "tenants_slug_live":
			e = Conflict("slug_taken", "slug is already taken")
		case "regions_pkey":
			e = Conflict("region_exists", "region already exists")
		case "shards_pkey":
			e = Conflict("shard_exists", "shard already exists")
		case "migration_runs_one_active":
			e = Conflict("migration_in_progress", "the product has a migration run in progress; resume it or wait for it")
		default:
			e = Conflict("conflict", "conflicts with an existing record (%s)", pgErr.ConstraintName)
		}
	case pgForeignKeyViolation:
		e = NotFound("not_found", "refers to something that does not exist (%s)", pgErr.ConstraintName)
	case pgCheckViolation:
		if pgErr.ConstraintName == "tenants_slug_reserved" {
			e = Invalid("reserved_slug", "%s", pgErr.Message)
		} else {
			e = Invalid("invalid", "violates %s", pgErr.ConstraintName)
		}
	case pgIllegalTransition:
		e = Conflict("illegal_transition", "%s", pgErr.Message)
	default:
		return err
	}
	e.Err = err
	return e
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
