// Package tenantdb is what Plinth does on a shard and inside the tenant
// databases it holds: the plinth identity schema every tenant database
// carries, one template database per product version, creating a database
// from a template, stamping its identity, applying product migrations with
// goose, and dropping it.
//
// Every operation here is idempotent, because the workflows that call it
// resume after a crash at any point.
package tenantdb

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Shard is a connection to one shard: a small pool on its maintenance
// database for DDL, and the configuration to connect to any database on it.
type Shard struct {
	Name   string
	Admin  *pgxpool.Pool
	config *pgx.ConnConfig
	// templates remembers template databases known to exist.
	templates sync.Map
}

// NewShard returns a Shard from a pool on its maintenance database.
func NewShard(name string, admin *pgxpool.Pool) *Shard {
	return &Shard{Name: name, Admin: admin, config: admin.Config().ConnConfig}
}

// ConnConfig returns the configuration to connect to database db on the
// shard. The search path is pinned to public: with the default
// ("$user", public) a role named like Plinth's own schema would resolve to
// it, and product migrations would create their tables inside plinth.
func (s *Shard) ConnConfig(db string) *pgx.ConnConfig {
	c := s.config.Copy()
	c.Database = db
	params := make(map[string]string, len(c.RuntimeParams)+1)
	for k, v := range c.RuntimeParams {
		params[k] = v
	}
	params["search_path"] = "public"
	c.RuntimeParams = params
	return c
}

// Connect opens one connection to database db on the shard. Callers close
// it when done, so that idle tenants hold no server connections.
func (s *Shard) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.ConnConfig(db))
	if err != nil {
		return nil, fmt.Errorf("connect to %s on shard %s: %w", db, s.Name, err)
	}
	return conn, nil
}

// TemplateName is the template database of a product version. Templates are
// versioned so that nothing connected to an old one blocks creating from the
// current one.
func TemplateName(product string, version int64) string {
	return fmt.Sprintf("tpl_%s_v%d", product, version)
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// Exists reports whether database name exists on the shard.
func (s *Shard) Exists(ctx context.Context, name string) (bool, error) {
	var ok bool
	err := s.Admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up database %s on shard %s: %w", name, s.Name, err)
	}
	return ok, nil
}

// Create creates database name from template. When it already exists (an
// earlier attempt created it and crashed before recording that) it is left
// as it is; Stamp then checks that it is the expected database.
func (s *Shard) Create(ctx context.Context, name, template string) error {
	_, err := s.Admin.Exec(ctx, "CREATE DATABASE "+quote(name)+" TEMPLATE "+quote(template))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	}
	if err != nil {
		s.templates.Delete(template) // it may be gone: look again next time
		return fmt.Errorf("create database %s from %s on shard %s: %w", name, template, s.Name, err)
	}
	return nil
}

// BeingCreated reports whether a backend on the shard is running a CREATE
// DATABASE of name right now.
func (s *Shard) BeingCreated(ctx context.Context, name string) (bool, error) {
	var busy bool
	err := s.Admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
		WHERE state = 'active' AND query ILIKE 'CREATE DATABASE%' AND position($1 in query) > 0)`, quote(name)).Scan(&busy)
	if err != nil {
		return false, fmt.Errorf("look for a running creation of %s on shard %s: %w", name, s.Name, err)
	}
	return busy, nil
}

// Drop drops database name if it exists, ending any sessions on it.
func (s *Shard) Drop(ctx context.Context, name string) error {
	if _, err := s.Admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(name)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s on shard %s: %w", name, s.Name, err)
	}
	return nil
}

// Identity is what a tenant database records about itself in plinth.identity.
type Identity struct {
	DatabaseID     *uuid.UUID
	TenantID       *uuid.UUID
	InstallationID *uuid.UUID
	Product        string
	SchemaVersion  int64
	CreatedAt      time.Time
	AssignedAt     *time.Time
}

// identitySchema is the plinth schema, the same in every tenant database.
// Product migrations never touch it (the catalog refuses ones that do).
const identitySchema = `
CREATE SCHEMA IF NOT EXISTS plinth;
REVOKE ALL ON SCHEMA plinth FROM PUBLIC;
CREATE TABLE IF NOT EXISTS plinth.identity (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    database_id     uuid,
    tenant_id       uuid,
    installation_id uuid,
    product         text NOT NULL,
    schema_version  bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    assigned_at     timestamptz,
    CHECK ((tenant_id IS NULL) = (installation_id IS NULL))
);
CREATE TABLE IF NOT EXISTS plinth.heartbeat (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    stamped_at timestamptz NOT NULL
);`

// ErrIdentityMismatch means a database carries another database's or
// tenant's identity: Plinth refuses to use it.
var ErrIdentityMismatch = errors.New("identity mismatch")

// Stamp records in database name that it is database id and, when tenant
// is not nil, that it belongs to that tenant and installation. Stamping
// again with the same identity changes nothing; a database that already
// belongs to someone else is refused with ErrIdentityMismatch.
func (s *Shard) Stamp(ctx context.Context, name string, id uuid.UUID, tenant, installation *uuid.UUID) error {
	conn, err := s.Connect(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tag, err := conn.Exec(ctx, `
		UPDATE plinth.identity SET database_id = $1, tenant_id = $2, installation_id = $3,
			assigned_at = CASE WHEN $2::uuid IS NULL THEN NULL ELSE coalesce(assigned_at, now()) END
		WHERE (database_id IS NULL OR database_id = $1)
		  AND (tenant_id IS NULL OR (tenant_id = $2 AND installation_id = $3))`, id, tenant, installation)
	if err != nil {
		return fmt.Errorf("stamp identity of %s: %w", name, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("stamp %s as database %s: %w", name, id, ErrIdentityMismatch)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO plinth.heartbeat (stamped_at) VALUES (now())
		ON CONFLICT (singleton) DO UPDATE SET stamped_at = now()`); err != nil {
		return fmt.Errorf("stamp heartbeat of %s: %w", name, err)
	}
	return nil
}

// ReadIdentity returns the identity recorded in database name.
func (s *Shard) ReadIdentity(ctx context.Context, name string) (Identity, error) {
	conn, err := s.Connect(ctx, name)
	if err != nil {
		return Identity{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id, err := IdentityOf(ctx, conn)
	if err != nil {
		return Identity{}, fmt.Errorf("read identity of %s: %w", name, err)
	}
	return id, nil
}

// IdentityOf reads the identity of the database conn is connected to
// (on any server: a drill reads it from a scratch restore).
func IdentityOf(ctx context.Context, conn *pgx.Conn) (Identity, error) {
	var id Identity
	err := conn.QueryRow(ctx, `SELECT database_id, tenant_id, installation_id, product, schema_version, created_at, assigned_at
		FROM plinth.identity`).Scan(&id.DatabaseID, &id.TenantID, &id.InstallationID, &id.Product, &id.SchemaVersion,
		&id.CreatedAt, &id.AssignedAt)
	return id, err
}

// lockKey maps a name to an advisory lock key on the shard.
func lockKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("plinth:" + name))
	return int64(h.Sum64())
}

// Fence stops database name from taking connections and ends the ones it
// has (a restore swaps it out). A database that does not exist is fenced.
func (s *Shard) Fence(ctx context.Context, name string) error {
	if err := s.allowConnections(ctx, name, false); err != nil {
		return err
	}
	if _, err := s.Admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
		return fmt.Errorf("end sessions on %s on shard %s: %w", name, s.Name, err)
	}
	return nil
}

// Unfence lets database name take connections again.
func (s *Shard) Unfence(ctx context.Context, name string) error {
	return s.allowConnections(ctx, name, true)
}

func (s *Shard) allowConnections(ctx context.Context, name string, allow bool) error {
	_, err := s.Admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", quote(name), allow))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name: gone
		return nil
	}
	if err != nil {
		return fmt.Errorf("set %s on shard %s to allow connections %t: %w", name, s.Name, allow, err)
	}
	return nil
}

// Adopt records in database name, a copy of database from restored from
// backups, that it is now database id: it must carry from's identity for
// the same tenant and installation (or already be id). It returns the
// identity.
func (s *Shard) Adopt(ctx context.Context, name string, id, from, tenant, installation uuid.UUID) (Identity, error) {
	return s.AdoptAs(ctx, name, id, from, tenant, installation, tenant, installation)
}

// AdoptAs is Adopt for a copy that goes to another tenant and
// installation (asTenant, asInstallation), which it then names: a restore
// into a new tenant. A copy that names them already is taken as adopted.
func (s *Shard) AdoptAs(ctx context.Context, name string, id, from, tenant, installation, asTenant, asInstallation uuid.UUID) (Identity, error) {
	conn, err := s.Connect(ctx, name)
	if err != nil {
		return Identity{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tag, err := conn.Exec(ctx, `UPDATE plinth.identity SET database_id = $1, tenant_id = $5, installation_id = $6,
			assigned_at = CASE WHEN tenant_id = $5 THEN assigned_at ELSE now() END
		WHERE (database_id IN ($1, $2) AND tenant_id = $3 AND installation_id = $4)
		   OR (database_id = $1 AND tenant_id = $5 AND installation_id = $6)`, id, from, tenant, installation, asTenant, asInstallation)
	if err != nil {
		return Identity{}, fmt.Errorf("adopt identity of %s: %w", name, err)
	}
	if tag.RowsAffected() != 1 {
		return Identity{}, fmt.Errorf("%s is not a copy of database %s of tenant %s: %w", name, from, tenant, ErrIdentityMismatch)
	}
	return s.ReadIdentity(ctx, name)
}
