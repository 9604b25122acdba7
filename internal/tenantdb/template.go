package tenantdb

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"testing/fstest"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// versionTable is goose's table of applied product migrations, kept in the
// plinth schema so that it travels with every copy of the database.
const versionTable = "plinth.goose_db_version"

// EnsureTemplate makes sure the shard has the template database of the
// product at version, building it with the migrations load returns when it
// is missing, and returns its name. Templates known to exist are
// remembered, so the common case costs no query. Builders on several
// workers take turns through an advisory lock on the shard; a build that
// crashed halfway is thrown away and done again, since the template gets its
// final name only when complete.
func (s *Shard) EnsureTemplate(ctx context.Context, product string, version int64, load func() ([]catalog.Migration, error)) (string, error) {
	name := TemplateName(product, version)
	if _, ok := s.templates.Load(name); ok {
		return name, nil
	}
	if ready, err := s.templateReady(ctx, name); err != nil || ready {
		if ready {
			s.templates.Store(name, true)
		}
		return name, err
	}
	ms, err := load()
	if err != nil {
		return "", err
	}
	if len(ms) == 0 || ms[len(ms)-1].Version != version {
		return "", fmt.Errorf("template %s: the migrations do not end at version %d", name, version)
	}
	// A connection of its own, not one of the admin pool's: builders waiting
	// for the lock must not starve the pool the build itself (and health
	// probes) need. Every statement of the build runs on it.
	conn, err := s.Connect(ctx, s.config.Database)
	if err != nil {
		return "", fmt.Errorf("template %s on shard %s: %w", name, s.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey(name)); err != nil {
		return "", fmt.Errorf("lock template %s: %w", name, err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey(name)) }()

	var exists, isTemplate bool
	err = conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(datistemplate), false) FROM pg_database WHERE datname = $1`, name).
		Scan(&exists, &isTemplate)
	if err != nil {
		return "", fmt.Errorf("look up template %s: %w", name, err)
	}
	if !exists {
		build := name + "_build"
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(build)+" WITH (FORCE)"); err != nil {
			return "", fmt.Errorf("drop the unfinished build of %s: %w", name, err)
		}
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+quote(build)+" TEMPLATE template0"); err != nil {
			return "", fmt.Errorf("create template %s: %w", build, err)
		}
		if err := s.initialize(ctx, build, product, ms); err != nil {
			return "", err
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+quote(build)+" RENAME TO "+quote(name)); err != nil {
			return "", fmt.Errorf("name template %s: %w", name, err)
		}
	}
	if !isTemplate {
		// No connections allowed: nothing can connect to the template and
		// block a CREATE DATABASE from it.
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+quote(name)+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
			return "", fmt.Errorf("mark template %s: %w", name, err)
		}
	}
	s.templates.Store(name, true)
	return name, nil
}

func (s *Shard) templateReady(ctx context.Context, name string) (bool, error) {
	var ok bool
	err := s.Admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)`, name).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up template %s on shard %s: %w", name, s.Name, err)
	}
	return ok, nil
}

// initialize gives a fresh database the identity schema and the product's
// migrations.
func (s *Shard) initialize(ctx context.Context, db, product string, ms []catalog.Migration) error {
	conn, err := s.Connect(ctx, db)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, identitySchema)
	if err == nil {
		_, err = conn.Exec(ctx, `INSERT INTO plinth.identity (product) VALUES ($1) ON CONFLICT DO NOTHING`, product)
	}
	_ = conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("create identity schema in %s: %w", db, err)
	}
	return s.Migrate(ctx, db, ms, ms[len(ms)-1].Version)
}

// Migrate applies the product migrations up to version to database db and
// records the version in its identity. Already applied migrations are
// skipped, so it is safe to run again.
func (s *Shard) Migrate(ctx context.Context, db string, ms []catalog.Migration, version int64) error {
	fsys := fstest.MapFS{}
	for _, m := range ms {
		fsys[fmt.Sprintf("%05d_%s.sql", m.Version, sanitizeName(m.Name))] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	// The migrations commit without waiting for their WAL flush, and the
	// version record below commits with it: WAL is flushed in order, so once
	// that commit returns every migration before it is durable too, for one
	// flush per database instead of one per migration plus one. A crash
	// before it loses only unrecorded work, which the next run redoes.
	cc := s.ConnConfig(db)
	cc.RuntimeParams["synchronous_commit"] = "off"
	sqlDB := stdlib.OpenDB(*cc)
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(1)
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, fsys,
		goose.WithTableName(versionTable), goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(slog.New(slog.DiscardHandler)))
	if err != nil {
		return fmt.Errorf("migrations of %s: %w", db, err)
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		return fmt.Errorf("migrate %s to version %d: %w", db, version, err)
	}
	if err := recordVersion(ctx, sqlDB, version); err != nil {
		return fmt.Errorf("record schema version of %s: %w", db, err)
	}
	return nil
}

// recordVersion stamps the schema version in the identity, committing
// synchronously (see Migrate).
func recordVersion(ctx context.Context, db *sql.DB, version int64) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE plinth.identity SET schema_version = $1`, version); err != nil {
		return err
	}
	return tx.Commit()
}

// sanitizeName keeps a migration name usable as part of a file name.
func sanitizeName(name string) string {
	out := []rune{}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			out = append(out, r)
		default:
			out = append(out, '_')
		}
	}
	if len(out) == 0 {
		return "migration"
	}
	return string(out)
}

// DropTemplate drops a product template that is no longer current.
func (s *Shard) DropTemplate(ctx context.Context, name string) error {
	s.templates.Delete(name)
	if _, err := s.Admin.Exec(ctx, "ALTER DATABASE "+quote(name)+" WITH IS_TEMPLATE false"); err != nil {
		if ok, _ := s.Exists(ctx, name); !ok {
			return nil
		}
		return fmt.Errorf("unmark template %s: %w", name, err)
	}
	return s.Drop(ctx, name)
}
