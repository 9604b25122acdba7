package catalog

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Rebuilding the catalog from the shards: when the control database is
// lost, the tenants, installations and databases are recreated from the
// identity rows the tenant databases carry (see provision.RebuildCatalog).

// RecoveredSlug is the slug a tenant recreated from its databases gets:
// identities do not record slugs, so it is derived from the tenant's ID
// (deterministic, so a second rebuild agrees, and never a reserved word).
func RecoveredSlug(tenantID uuid.UUID) string {
	return "tenant-" + strings.ReplaceAll(tenantID.String(), "-", "")
}

// RecoveredDatabase is a tenant database as its identity row describes it.
type RecoveredDatabase struct {
	ID            uuid.UUID
	Name          string
	Shard         string
	Product       string
	SchemaVersion int64
	CreatedAt     time.Time // zero: now
	// The installation it belongs to (uuid.Nil for a warm database), when
	// the installation was created, and when the database was stamped with it.
	InstallationID        uuid.UUID
	InstallationCreatedAt time.Time
	AssignedAt            *time.Time
}

// RecoverTenantParams describes a tenant to recreate from its databases.
type RecoverTenantParams struct {
	ID        uuid.UUID
	Slug      string
	Region    string
	Tier      int
	CreatedAt time.Time // zero: now
	Databases []RecoveredDatabase
	Actor     string
	RequestID string
}

// RecoverTenantResult says what RecoverTenant inserted.
type RecoverTenantResult struct {
	TenantCreated bool
	Databases     []RecoveredDatabase // those recorded now (the others were there already)
}

// RecoverTenant recreates a tenant and its installations and databases, in
// one transaction with an audit record: the tenant (in state active) unless
// it exists, and each installation, ready, with its database, assigned,
// unless the catalog has them already. An installation or database the
// catalog has with another tenant, product or database is a conflict, and
// nothing is written.
func (s *Store) RecoverTenant(ctx context.Context, p RecoverTenantParams) (RecoverTenantResult, error) {
	if len(p.Databases) == 0 {
		return RecoverTenantResult{}, Invalid("invalid_databases", "a tenant is recreated with at least one database")
	}
	for _, d := range p.Databases {
		if d.InstallationID == uuid.Nil {
			return RecoverTenantResult{}, Invalid("invalid_databases", "database %s names no installation", d.Name)
		}
	}
	var res RecoverTenantResult
	err := s.InTx(ctx, func(tx *Store) error {
		res = RecoverTenantResult{}
		var state TenantState
		err := tx.q.QueryRow(ctx, `SELECT state FROM tenants WHERE id = $1 FOR UPDATE`, p.ID).Scan(&state)
		switch {
		case isNoRows(err):
			if err := tx.insertTenant(ctx, p.ID, CreateTenantParams{Slug: p.Slug, DisplayName: p.Slug, Region: p.Region, Tier: p.Tier},
				p.CreatedAt); err != nil {
				return err
			}
			res.TenantCreated = true
		case err != nil:
			return fmt.Errorf("lock tenant: %w", err)
		case state == StatePurged:
			return Conflict("tenant_purged", "tenant %s is purged in the catalog, yet a shard holds its database", p.ID)
		}
		var products []string
		for _, d := range p.Databases {
			added, err := tx.recoverInstallation(ctx, p.ID, d)
			if err != nil {
				return err
			}
			if added {
				res.Databases = append(res.Databases, d)
				products = append(products, d.Product)
			}
		}
		reason := "recreated from the identities of its databases on the shards: " + strings.Join(products, ", ")
		if res.TenantCreated {
			_, err := tx.Transition(ctx, TransitionParams{
				TenantID: p.ID, Action: "rebuilt", Actor: p.Actor, RequestID: p.RequestID, Reason: reason,
				From: []TenantState{StateProvisioning}, To: StateActive,
			})
			return err
		}
		if len(products) == 0 {
			return nil
		}
		return tx.Audit(ctx, AuditEntry{Actor: p.Actor, Action: "tenant.rebuilt", TargetKind: "tenant",
			TargetID: p.ID.String(), Reason: reason, RequestID: p.RequestID})
	})
	return res, err
}

// recoverInstallation records one installation of tenant and its database,
// reporting whether it wrote anything.
func (s *Store) recoverInstallation(ctx context.Context, tenant uuid.UUID, d RecoveredDatabase) (bool, error) {
	var owner uuid.UUID
	var product string
	err := s.q.QueryRow(ctx, `SELECT tenant_id, product FROM installations WHERE id = $1 FOR UPDATE`,
		d.InstallationID).Scan(&owner, &product)
	switch {
	case isNoRows(err):
		if err := s.insertInstallation(ctx, d.InstallationID, tenant, d.Product, InstallationReady, d.InstallationCreatedAt); err != nil {
			return false, err
		}
	case err != nil:
		return false, fmt.Errorf("lock installation: %w", err)
	case owner != tenant || product != d.Product:
		return false, Conflict("installation_conflict", "the catalog has installation %s as tenant %s's %s, database %s says tenant %s's %s",
			d.InstallationID, owner, product, d.Name, tenant, d.Product)
	}
	cur, err := s.GetDatabase(ctx, d.ID)
	switch {
	case err == nil && cur.State == DatabaseAssigned && cur.InstallationID != nil && *cur.InstallationID == d.InstallationID &&
		cur.Name == d.Name && cur.Shard == d.Shard:
		return false, nil // there already
	case err == nil:
		return false, Conflict("database_conflict", "the catalog has database %s as %s %s on shard %s", d.ID, cur.State, cur.Name, cur.Shard)
	case !IsCode(err, "database_not_found"):
		return false, err
	}
	inst := d.InstallationID
	if _, err := s.insertDatabase(ctx, Database{ID: d.ID, Name: d.Name, Shard: d.Shard, Product: d.Product,
		State: DatabaseAssigned, SchemaVersion: d.SchemaVersion, InstallationID: &inst, CreatedAt: d.CreatedAt}); err != nil {
		return false, err
	}
	var stamped time.Time
	if d.AssignedAt != nil {
		stamped = *d.AssignedAt
	}
	return true, s.markStampedAt(ctx, d.InstallationID, stamped)
}

// RecoverWarmDatabase records an unassigned database found on a shard as
// warm, with an audit record, and reports whether it did (false: the
// catalog has it already).
func (s *Store) RecoverWarmDatabase(ctx context.Context, d RecoveredDatabase, actor, requestID string) (bool, error) {
	if d.InstallationID != uuid.Nil {
		return false, Invalid("invalid_database", "database %s belongs to an installation: it is not warm", d.Name)
	}
	added := false
	err := s.InTx(ctx, func(tx *Store) error {
		cur, err := tx.GetDatabase(ctx, d.ID)
		switch {
		case err == nil && cur.State == DatabaseWarm && cur.Name == d.Name && cur.Shard == d.Shard:
			return nil
		case err == nil:
			return Conflict("database_conflict", "the catalog has database %s as %s %s on shard %s", d.ID, cur.State, cur.Name, cur.Shard)
		case !IsCode(err, "database_not_found"):
			return err
		}
		if _, err := tx.insertDatabase(ctx, Database{ID: d.ID, Name: d.Name, Shard: d.Shard, Product: d.Product,
			State: DatabaseWarm, SchemaVersion: d.SchemaVersion, CreatedAt: d.CreatedAt}); err != nil {
			return err
		}
		added = true
		return tx.Audit(ctx, AuditEntry{Actor: actor, Action: "database.rebuilt", TargetKind: "database",
			TargetID: d.ID.String(), ToState: string(DatabaseWarm), RequestID: requestID,
			Reason: fmt.Sprintf("recreated from shard %s: an unassigned %s database", d.Shard, d.Product)})
	})
	return added, err
}

// InstallationRef is what the catalog records of an installation: whose it
// is, and its live database (none when Database is empty).
type InstallationRef struct {
	ID       uuid.UUID
	TenantID uuid.UUID
	Product  string
	State    InstallationState
	Database string
	Shard    string
}

// InstallationRefs returns the installations of ids the catalog has.
func (s *Store) InstallationRefs(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]InstallationRef, error) {
	rows, err := s.q.Query(ctx, `
		SELECT i.id, i.tenant_id, i.product, i.state, coalesce(d.name, ''), coalesce(d.shard, '')
		FROM installations i
		LEFT JOIN tenant_databases d ON d.installation_id = i.id AND d.state IN ('creating', 'assigned')
		WHERE i.id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("installation refs: %w", err)
	}
	refs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (InstallationRef, error) {
		var r InstallationRef
		return r, row.Scan(&r.ID, &r.TenantID, &r.Product, &r.State, &r.Database, &r.Shard)
	})
	if err != nil {
		return nil, fmt.Errorf("installation refs: %w", err)
	}
	out := make(map[uuid.UUID]InstallationRef, len(refs))
	for _, r := range refs {
		out[r.ID] = r
	}
	return out, nil
}

// DatabasesNamed returns the records the catalog has of databases named
// names, on any shard and in any state, by name.
func (s *Store) DatabasesNamed(ctx context.Context, names []string) (map[string]Database, error) {
	dbs, err := collectDatabases(s.q.Query(ctx, `SELECT `+databaseColumns+` FROM tenant_databases WHERE name = ANY($1)`, names))
	if err != nil {
		return nil, fmt.Errorf("databases named: %w", err)
	}
	out := make(map[string]Database, len(dbs))
	for _, d := range dbs {
		out[d.Name] = d
	}
	return out, nil
}
