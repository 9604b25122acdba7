package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Restore kinds.
const (
	RestoreKindRestore = "restore"
	RestoreKindUndo    = "undo"
)

// Restore and restore item states.
const (
	RestoreRunning              = "running"
	RestoreSucceeded            = "succeeded"
	RestoreFailed               = "failed"
	RestoreFinishedWithFailures = "finished_with_failures"

	ItemPending = "pending"
	ItemCopied  = "copied"
	ItemSwapped = "swapped"
	ItemFailed  = "failed"
)

// RestorableStates are the states a tenant can be restored in place from;
// it returns to the same state afterwards. A deleted or purged tenant can
// be restored too (while its backups last), and returns to the state it had
// before it was deleted, when that is one of these.
var RestorableStates = []TenantState{StateActive, StateSuspended, StateDeactivated}

// gone reports whether a tenant in state st is deleted or purged: its
// restore brings it back, without passing through restoring.
func gone(st TenantState) bool { return st == StateDeleted || st == StatePurged }

// MaxRestoreTenants bounds one restore request.
const MaxRestoreTenants = 1000

// Restore brings installations' databases back as they were at a moment.
type Restore struct {
	ID         uuid.UUID  `json:"id"`
	Kind       string     `json:"kind"`
	TargetTime *time.Time `json:"target_time,omitempty"`
	// AsTenantID is the new tenant the restore goes into, when it goes into
	// one (--as) instead of swapping into the tenant it restores.
	AsTenantID  *uuid.UUID    `json:"as_tenant_id,omitempty"`
	AsTenant    string        `json:"as_tenant,omitempty"` // slug
	Concurrency int           `json:"concurrency"`
	Actor       string        `json:"actor"`
	State       string        `json:"state"`
	Error       string        `json:"error,omitempty"`
	CreatedAt   time.Time     `json:"created_at"`
	UpdatedAt   time.Time     `json:"updated_at"`
	FinishedAt  *time.Time    `json:"finished_at,omitempty"`
	Items       []RestoreItem `json:"items"`
}

// RestoreItem is one installation's database in a restore. The step times
// are in milliseconds; the scratch restore and replay are per shard.
type RestoreItem struct {
	InstallationID     uuid.UUID   `json:"installation_id"`
	TenantID           uuid.UUID   `json:"tenant_id"`
	Tenant             string      `json:"tenant"` // slug
	Product            string      `json:"product"`
	Shard              string      `json:"shard"`
	CurrentDatabaseID  uuid.UUID   `json:"current_database_id"`
	CurrentDatabase    string      `json:"current_database"`
	SourceDatabaseID   uuid.UUID   `json:"source_database_id"`
	SourceDatabase     string      `json:"source_database"`
	RestoredDatabaseID *uuid.UUID  `json:"restored_database_id,omitempty"`
	RestoredDatabase   string      `json:"restored_database,omitempty"`
	PriorState         TenantState `json:"prior_state"`
	// ReturnState is the state the tenant takes after the swap when it is
	// not PriorState: for a deleted or purged tenant, its state before.
	ReturnState TenantState `json:"return_state,omitempty"`
	State       string      `json:"state"`
	Error       string      `json:"error,omitempty"`
	Attempts    int         `json:"attempts"`
	RestoreMS   *int64      `json:"restore_ms,omitempty"`
	ReplayMS    *int64      `json:"replay_ms,omitempty"`
	CopyMS      *int64      `json:"copy_ms,omitempty"`
	SwapMS      *int64      `json:"swap_ms,omitempty"`
	SwappedAt   *time.Time  `json:"swapped_at,omitempty"`
	// AsInstallationID is the new tenant's installation that the restored
	// database goes to, in a restore into a new tenant.
	AsInstallationID *uuid.UUID `json:"as_installation_id,omitempty"`
}

// CreateRestoreParams asks for a restore.
type CreateRestoreParams struct {
	// Tenants are slugs or IDs (a purged tenant's ID only).
	Tenants []string
	// DeletedBetween, instead of Tenants, names the tenants deleted (and
	// maybe purged since) at or after its first time and before its second.
	DeletedBetween *[2]time.Time
	// As, a new slug, restores one tenant into a new tenant of that slug
	// (same region and tier) instead, leaving the tenant as it is.
	As string
	// Product restores only that product's database ("": every product).
	Product string
	// Target is the moment to go back to; nil asks for an undo of each
	// installation's last restore.
	Target *time.Time
	// Retention is how far back backups reach (Target may not be older).
	Retention   time.Duration
	Concurrency int
	Actor       string
	RequestID   string
}

// CreateRestore records a restore and its items in one transaction, after
// checking every tenant: each must exist, be in a restorable state, have no
// restore running, and (for a restore) have existed at the target time. On
// any refusal nothing is recorded.
func (s *Store) CreateRestore(ctx context.Context, p CreateRestoreParams) (Restore, error) {
	if err := s.ResolveRestoreTenants(ctx, &p); err != nil {
		return Restore{}, err
	}
	switch {
	case p.As != "" && (len(p.Tenants) != 1 || p.Target == nil):
		return Restore{}, Invalid("invalid_as", "a restore into a new tenant takes one tenant and a target time")
	case len(p.Tenants) == 0:
		return Restore{}, Invalid("invalid_tenants", "name at least one tenant to restore")
	case len(p.Tenants) > MaxRestoreTenants:
		return Restore{}, Invalid("invalid_tenants", "at most %d tenants per restore, not %d", MaxRestoreTenants, len(p.Tenants))
	case p.Concurrency < 0 || p.Concurrency > 32:
		return Restore{}, Invalid("invalid_concurrency", "concurrency must be 1 to 32, not %d", p.Concurrency)
	}
	if p.Concurrency == 0 {
		p.Concurrency = 2
	}
	kind := RestoreKindRestore
	if p.Target == nil {
		kind = RestoreKindUndo
	} else {
		now := time.Now()
		switch {
		case p.Target.After(now):
			return Restore{}, Invalid("target_in_future", "the target time %s is in the future", p.Target.UTC().Format(time.RFC3339))
		case p.Retention > 0 && p.Target.Before(now.Add(-p.Retention)):
			return Restore{}, Invalid("target_beyond_retention", "the target time %s is older than the backups' retention (%s)",
				p.Target.UTC().Format(time.RFC3339), p.Retention)
		}
	}
	id := uuid.Must(uuid.NewV7())
	var out Restore
	err := s.InTx(ctx, func(tx *Store) error {
		if _, err := tx.q.Exec(ctx, `INSERT INTO restores (id, kind, target_time, concurrency, actor) VALUES ($1, $2, $3, $4, $5)`,
			id, kind, p.Target, p.Concurrency, p.Actor); err != nil {
			return mapError(fmt.Errorf("record restore: %w", err))
		}
		seen := map[uuid.UUID]bool{}
		var t Tenant
		for _, ref := range p.Tenants {
			var err error
			if t, err = tx.GetTenant(ctx, ref); err != nil {
				return err
			}
			if seen[t.ID] {
				continue
			}
			seen[t.ID] = true
			if err := tx.addRestoreItems(ctx, id, t, p); err != nil {
				return err
			}
		}
		reason := restoreReason(p.Target)
		if p.As != "" {
			if err := tx.restoreAs(ctx, id, p.As, t); err != nil {
				return err
			}
			reason += " as " + p.As + " (from " + t.Slug + ")"
		}
		if err := tx.Audit(ctx, AuditEntry{Actor: p.Actor, Action: "restore." + kind, TargetKind: "restore", TargetID: id.String(),
			Reason: reason, RequestID: p.RequestID}); err != nil {
			return err
		}
		var err error
		out, err = tx.GetRestore(ctx, id)
		return err
	})
	return out, err
}

// restoreAs makes restore id, whose items restore tenant src, go into a
// new tenant of slug as instead: the tenant (provisioning, with a pending
// installation per product restored, in src's region and tier) and, per
// item, the installation its database goes to.
func (s *Store) restoreAs(ctx context.Context, id uuid.UUID, as string, src Tenant) error {
	var products []string
	if err := s.q.QueryRow(ctx, `SELECT array_agg(product ORDER BY product) FROM restore_items WHERE restore_id = $1`, id).Scan(&products); err != nil {
		return fmt.Errorf("restore items: %w", err)
	}
	t, err := s.CreateTenant(ctx, CreateTenantParams{Slug: as, DisplayName: truncate(src.DisplayName+" (restored)", 200),
		Region: src.Region, Tier: src.Tier, Products: products})
	if err != nil {
		return err
	}
	if _, err := s.q.Exec(ctx, `UPDATE restores SET as_tenant_id = $2 WHERE id = $1`, id, t.ID); err != nil {
		return fmt.Errorf("record the new tenant: %w", err)
	}
	if _, err := s.q.Exec(ctx, `UPDATE restore_items r SET as_installation_id = i.id FROM installations i
		WHERE r.restore_id = $1 AND i.tenant_id = $2 AND i.product = r.product`, id, t.ID); err != nil {
		return fmt.Errorf("record the new tenant's installations: %w", err)
	}
	return nil
}

func restoreReason(target *time.Time) string {
	if target == nil {
		return "undo the last restore"
	}
	return "to " + target.UTC().Format(time.RFC3339Nano)
}

func (s *Store) addRestoreItems(ctx context.Context, id uuid.UUID, t Tenant, p CreateRestoreParams) error {
	// Lock the tenant: two requests for it are checked one after the other.
	if _, err := s.q.Exec(ctx, `SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE`, t.ID); err != nil {
		return fmt.Errorf("lock tenant: %w", err)
	}
	var back TenantState // the state a deleted or purged tenant returns to
	switch {
	case slices.Contains(RestorableStates, t.State):
	case gone(t.State) && p.Target == nil:
		return Conflict("tenant_not_restorable", "tenant %s is %s: there is no restore of it to undo", t.Slug, t.State)
	case gone(t.State):
		back = t.StateBeforeDelete
		if !slices.Contains(RestorableStates, back) {
			return Conflict("tenant_not_restorable", "tenant %s was %s before it was deleted: it had no databases to restore", t.Slug, back)
		}
		if t.State == StatePurged && p.Product != "" {
			return Invalid("invalid_product", "tenant %s is purged: restore all its products together (no product)", t.Slug)
		}
		if t.State == StatePurged && p.As == "" {
			var taken bool
			if err := s.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE slug = $1 AND state <> 'purged')`, t.Slug).Scan(&taken); err != nil {
				return fmt.Errorf("look up slug: %w", err)
			}
			if taken {
				return Conflict("slug_taken", "tenant %s's slug belongs to another tenant now: restore it into a new tenant (as)", t.Slug)
			}
		}
		if t.PurgedAt != nil && !p.Target.Before(*t.PurgedAt) {
			return Invalid("target_after_purge", "tenant %s was purged at %s: restore it to a time before that",
				t.Slug, t.PurgedAt.UTC().Format(time.RFC3339))
		}
		var purging bool
		if err := s.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM operations WHERE tenant_id = $1 AND kind = 'purge' AND state = 'running')`,
			t.ID).Scan(&purging); err != nil {
			return fmt.Errorf("look for a running purge: %w", err)
		}
		if purging {
			return Conflict("purge_running", "tenant %s is being purged; restore it once the purge has finished", t.Slug)
		}
	default:
		return Conflict("tenant_not_restorable", "tenant %s is %s: only an active, suspended, deactivated, deleted or purged tenant can be restored", t.Slug, t.State)
	}
	running, err := s.RestoreRunning(ctx, t.ID)
	if err != nil {
		return err
	}
	if running {
		return Conflict("restore_running", "a restore of tenant %s is running; wait for it to finish", t.Slug)
	}
	if p.Target != nil && p.Target.Before(t.CreatedAt) {
		return Invalid("target_before_tenant", "tenant %s was created at %s, after the target time %s", t.Slug,
			t.CreatedAt.UTC().Format(time.RFC3339), p.Target.UTC().Format(time.RFC3339))
	}
	n := 0
	for _, in := range t.Installations {
		if p.Product != "" && in.Product != p.Product {
			continue
		}
		var current uuid.UUID
		switch {
		case t.State == StatePurged && in.State == InstallationPurged:
			d, err := s.PurgedDatabase(ctx, in.ID)
			if err != nil {
				return err
			}
			current = d.ID
		case in.DatabaseID == nil || in.State != InstallationReady:
			return Conflict("installation_not_ready", "tenant %s's %s database is not ready yet", t.Slug, in.Product)
		default:
			current = *in.DatabaseID
		}
		if err := s.addRestoreItem(ctx, id, t, in, current, back, p.Target); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		if p.Product != "" {
			return NotFound("installation_not_found", "tenant %s has no %s installation", t.Slug, p.Product)
		}
		return Conflict("nothing_to_restore", "tenant %s has no databases", t.Slug)
	}
	return nil
}

// addRestoreItem records one installation's item. current is the
// installation's database (for a purged tenant, the one it had when it was
// purged, now dropped); back is the state a deleted or purged tenant
// returns to. For a restore the source is the database that was the
// installation's at the target: the one the first swap after the target
// replaced, or the current one. For an undo it is the database the last
// swap replaced, and it needs no copy.
func (s *Store) addRestoreItem(ctx context.Context, id uuid.UUID, t Tenant, in Installation, current uuid.UUID, back TenantState, target *time.Time) error {
	source, restored, state := current, (*uuid.UUID)(nil), ItemPending
	if target != nil {
		err := s.q.QueryRow(ctx, `SELECT current_database_id FROM restore_items
			WHERE installation_id = $1 AND state = 'swapped' AND swapped_at > $2 AND as_installation_id IS NULL
			ORDER BY swapped_at LIMIT 1`, in.ID, *target).Scan(&source)
		if err != nil && !isNoRows(err) {
			return fmt.Errorf("find the database at the target time: %w", err)
		}
	} else {
		var back uuid.UUID
		var backState DatabaseState
		err := s.q.QueryRow(ctx, `SELECT d.id, d.state FROM restore_items r JOIN tenant_databases d ON d.id = r.current_database_id
			WHERE r.installation_id = $1 AND r.state = 'swapped' AND r.restored_database_id = $2
			ORDER BY r.swapped_at DESC LIMIT 1`, in.ID, current).Scan(&back, &backState)
		if isNoRows(err) {
			return Conflict("nothing_to_undo", "tenant %s's %s database was not restored: there is nothing to undo", t.Slug, in.Product)
		}
		if err != nil {
			return fmt.Errorf("find the database to swap back: %w", err)
		}
		if backState != DatabaseReplaced {
			return Conflict("nothing_to_undo", "the database tenant %s's last restore replaced is %s: it cannot come back", t.Slug, backState)
		}
		source, restored, state = back, &back, ItemCopied
	}
	_, err := s.q.Exec(ctx, `
		INSERT INTO restore_items (restore_id, installation_id, tenant_id, product, shard, current_database_id,
			source_database_id, source_database, restored_database_id, prior_state, state, return_state)
		SELECT $1, $2, $3, $4, c.shard, c.id, s.id, s.name, $7, $8, $9, nullif($10, '')
		FROM tenant_databases c, tenant_databases s WHERE c.id = $5 AND s.id = $6`,
		id, in.ID, t.ID, in.Product, current, source, restored, t.State, state, string(back))
	if err != nil {
		return mapError(fmt.Errorf("record restore item: %w", err))
	}
	return nil
}

// ResolveRestoreTenants turns p's DeletedBetween into Tenants.
func (s *Store) ResolveRestoreTenants(ctx context.Context, p *CreateRestoreParams) error {
	if p.DeletedBetween == nil {
		return nil
	}
	from, until := p.DeletedBetween[0], p.DeletedBetween[1]
	switch {
	case len(p.Tenants) > 0:
		return Invalid("invalid_tenants", "name the tenants or the time they were deleted between, not both")
	case !from.Before(until):
		return Invalid("invalid_deleted_between", "the deletion window must end after it begins")
	case p.Target == nil:
		return Invalid("invalid_target", "restoring deleted tenants needs a target time")
	}
	ids, err := s.TenantsDeletedBetween(ctx, from, until, *p.Target, p.Product, MaxRestoreTenants+1)
	if err != nil {
		return err
	}
	if len(ids) > MaxRestoreTenants {
		return Invalid("too_many_tenants", "more than %d restorable tenants were deleted in the window: narrow it", MaxRestoreTenants)
	}
	if len(ids) == 0 {
		return NotFound("no_deleted_tenants", "no tenant restorable to the target was deleted between %s and %s",
			from.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	}
	p.Tenants, p.DeletedBetween = ids, nil
	return nil
}

// RestoreRunning reports whether a restore of the tenant is under way.
func (s *Store) RestoreRunning(ctx context.Context, tenantID uuid.UUID) (bool, error) {
	var running bool
	if err := s.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM restore_items WHERE tenant_id = $1 AND state IN ('pending', 'copied'))`,
		tenantID).Scan(&running); err != nil {
		return false, fmt.Errorf("look for a running restore: %w", err)
	}
	return running, nil
}

// ExpireReplaced marks for dropping up to limit databases that a restore
// replaced more than retention ago (an undo can no longer bring them
// back), and says how many.
func (s *Store) ExpireReplaced(ctx context.Context, retention time.Duration, limit int) (int64, error) {
	tag, err := s.q.Exec(ctx, `UPDATE tenant_databases SET state = 'dropping', updated_at = now()
		WHERE id IN (SELECT d.id FROM tenant_databases d WHERE d.state = 'replaced'
			AND d.updated_at < now() - $1::bigint * interval '1 microsecond'
			-- not one an undo is about to swap back in
			AND NOT EXISTS (SELECT 1 FROM restore_items r WHERE r.restored_database_id = d.id AND r.state IN ('pending', 'copied'))
			ORDER BY d.updated_at LIMIT $2)`,
		retention.Microseconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("expire replaced databases: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PurgedDatabase returns the database a purged installation had when it
// was purged (dropped now): the one its last restore swapped in (not a
// restore into a new tenant: that copy is the new tenant's), or else its
// first.
func (s *Store) PurgedDatabase(ctx context.Context, installationID uuid.UUID) (Database, error) {
	var id uuid.UUID
	err := s.q.QueryRow(ctx, `SELECT coalesce(
			(SELECT restored_database_id FROM restore_items WHERE installation_id = $1 AND state = 'swapped'
			 AND as_installation_id IS NULL ORDER BY swapped_at DESC LIMIT 1),
			(SELECT id FROM tenant_databases WHERE installation_id = $1 ORDER BY created_at LIMIT 1))`,
		installationID).Scan(&id)
	if err != nil {
		return Database{}, NotFound("database_not_found", "installation %s never had a database", installationID)
	}
	return s.GetDatabase(ctx, id)
}

// TenantsDeletedBetween returns the IDs of the tenants deleted (and maybe
// purged since) in [from, until), oldest deletion first, at most limit,
// that a restore to target (of product, "" for all) can bring back: not
// those that had failed to provision, that were created after the target
// or purged before it, that lack the product (or are purged, with a
// product: they come back whole), purged ones whose slug another tenant
// has taken (they need a restore into a new tenant), or that a restore or
// purge is busy with.
// A window names many tenants, and one of these must not refuse them all.
func (s *Store) TenantsDeletedBetween(ctx context.Context, from, until, target time.Time, product string, limit int) ([]string, error) {
	rows, err := s.q.Query(ctx, `SELECT t.id::text FROM tenants t WHERE t.state IN ('deleted', 'purged')
		AND t.deleted_at >= $1 AND t.deleted_at < $2 AND t.state_before_delete IN ('active', 'suspended', 'deactivated')
		AND t.created_at < $3 AND (t.purged_at IS NULL OR t.purged_at > $3)
		AND ($4 = '' OR (t.state = 'deleted' AND EXISTS (SELECT 1 FROM installations i WHERE i.tenant_id = t.id AND i.product = $4)))
		AND NOT EXISTS (SELECT 1 FROM restore_items r WHERE r.tenant_id = t.id AND r.state IN ('pending', 'copied'))
		AND (t.state = 'deleted' OR NOT EXISTS (SELECT 1 FROM tenants o WHERE o.slug = t.slug AND o.state <> 'purged'))
		AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.tenant_id = t.id AND o.kind = 'purge' AND o.state = 'running')
		ORDER BY t.deleted_at, t.id LIMIT $5`, from, until, target, product, limit)
	if err != nil {
		return nil, fmt.Errorf("tenants deleted between: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

const restoreItemColumns = `r.installation_id, r.tenant_id, t.slug, r.product, r.shard, r.current_database_id, c.name,
	r.source_database_id, r.source_database, r.restored_database_id, coalesce(n.name, ''), r.prior_state, coalesce(r.return_state, ''), r.state,
	r.error, r.attempts, r.restore_ms, r.replay_ms, r.copy_ms, r.swap_ms, r.swapped_at, r.as_installation_id`

// GetRestore returns a restore with its items, in tenant and product order.
func (s *Store) GetRestore(ctx context.Context, id uuid.UUID) (Restore, error) {
	var r Restore
	err := s.q.QueryRow(ctx, `SELECT r.id, r.kind, r.target_time, r.as_tenant_id, coalesce(a.slug, ''), r.concurrency, r.actor,
			r.state, r.error, r.created_at, r.updated_at, r.finished_at
		FROM restores r LEFT JOIN tenants a ON a.id = r.as_tenant_id WHERE r.id = $1`, id).Scan(&r.ID, &r.Kind, &r.TargetTime,
		&r.AsTenantID, &r.AsTenant, &r.Concurrency, &r.Actor, &r.State, &r.Error, &r.CreatedAt, &r.UpdatedAt, &r.FinishedAt)
	if isNoRows(err) {
		return Restore{}, NotFound("restore_not_found", "restore %s does not exist", id)
	}
	if err != nil {
		return Restore{}, fmt.Errorf("get restore: %w", err)
	}
	rows, err := s.q.Query(ctx, `SELECT `+restoreItemColumns+`
		FROM restore_items r JOIN tenants t ON t.id = r.tenant_id
		JOIN tenant_databases c ON c.id = r.current_database_id
		LEFT JOIN tenant_databases n ON n.id = r.restored_database_id
		WHERE r.restore_id = $1 ORDER BY t.slug, r.product`, id)
	if err != nil {
		return Restore{}, fmt.Errorf("get restore items: %w", err)
	}
	r.Items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (RestoreItem, error) {
		var it RestoreItem
		err := row.Scan(&it.InstallationID, &it.TenantID, &it.Tenant, &it.Product, &it.Shard, &it.CurrentDatabaseID,
			&it.CurrentDatabase, &it.SourceDatabaseID, &it.SourceDatabase, &it.RestoredDatabaseID, &it.RestoredDatabase,
			&it.PriorState, &it.ReturnState, &it.State, &it.Error, &it.Attempts, &it.RestoreMS, &it.ReplayMS, &it.CopyMS, &it.SwapMS, &it.SwappedAt, &it.AsInstallationID)
		return it, err
	})
	if err != nil {
		return Restore{}, fmt.Errorf("get restore items: %w", err)
	}
	return r, nil
}

// ReserveRestoreCopy records the database an item's copy goes into (state
// creating, no installation yet), or returns the one recorded before.
func (s *Store) ReserveRestoreCopy(ctx context.Context, restoreID, installationID uuid.UUID) (Database, error) {
	var d Database
	err := s.InTx(ctx, func(tx *Store) error {
		var existing *uuid.UUID
		var shard, product string
		err := tx.q.QueryRow(ctx, `SELECT restored_database_id, shard, product FROM restore_items
			WHERE restore_id = $1 AND installation_id = $2 FOR UPDATE`, restoreID, installationID).Scan(&existing, &shard, &product)
		if err != nil {
			return fmt.Errorf("lock restore item: %w", err)
		}
		if existing != nil {
			d, err = tx.GetDatabase(ctx, *existing)
			return err
		}
		if d, err = tx.insertIntent(ctx, shard, product, 0, nil); err != nil {
			return err
		}
		_, err = tx.q.Exec(ctx, `UPDATE restore_items SET restored_database_id = $3, updated_at = now()
			WHERE restore_id = $1 AND installation_id = $2`, restoreID, installationID, d.ID)
		return err
	})
	return d, err
}

// ItemTimes are the step times of an item, in milliseconds.
type ItemTimes struct{ Restore, Replay, Copy int64 }

// MarkRestoreCopied records that an item's copy exists and carries the
// right identity, at schema version version.
func (s *Store) MarkRestoreCopied(ctx context.Context, restoreID, installationID uuid.UUID, version int64, times ItemTimes) error {
	return s.InTx(ctx, func(tx *Store) error {
		var restored uuid.UUID
		err := tx.q.QueryRow(ctx, `UPDATE restore_items SET state = 'copied', attempts = attempts + 1, error = '',
			restore_ms = $3, replay_ms = $4, copy_ms = $5, updated_at = now()
			WHERE restore_id = $1 AND installation_id = $2 AND state = 'pending' RETURNING restored_database_id`,
			restoreID, installationID, times.Restore, times.Replay, times.Copy).Scan(&restored)
		if err != nil {
			return fmt.Errorf("mark restore item copied: %w", err)
		}
		_, err = tx.q.Exec(ctx, `UPDATE tenant_databases SET schema_version = $2, updated_at = now() WHERE id = $1`, restored, version)
		return err
	})
}

// FailRestoreItem records why an item failed; nothing of it was swapped.
func (s *Store) FailRestoreItem(ctx context.Context, restoreID, installationID uuid.UUID, msg string) error {
	_, err := s.q.Exec(ctx, `UPDATE restore_items SET state = 'failed', error = $3, attempts = attempts + 1, updated_at = now()
		WHERE restore_id = $1 AND installation_id = $2 AND state IN ('pending', 'copied')`, restoreID, installationID, truncate(msg, 2000))
	if err != nil {
		return fmt.Errorf("fail restore item: %w", err)
	}
	return nil
}

// BeginRestoreSwap moves the tenant to restoring (the edge then holds its
// requests), unless it already is (a resumed swap). A deleted or purged
// tenant takes no requests and stays as it is; it must still be so.
func (s *Store) BeginRestoreSwap(ctx context.Context, tenantID uuid.UUID, prior TenantState, actor string) error {
	return s.InTx(ctx, func(tx *Store) error {
		t, err := tx.GetTenantByID(ctx, tenantID)
		if err != nil || t.State == StateRestoring {
			return err
		}
		if gone(prior) {
			if t.State != prior {
				return illegalTransition("tenant %s was %s when the restore began and is %s now", t.Slug, prior, t.State)
			}
			return nil
		}
		_, err = tx.Transition(ctx, TransitionParams{TenantID: tenantID, Action: "restore.begin", Actor: actor,
			From: []TenantState{prior}, To: StateRestoring})
		return err
	})
}

// FinishRestoreSwap points each copied item of the tenant in the restore at
// its restored database, keeps the database it replaces as replaced, and
// returns the tenant to its prior state, in one transaction. A deleted
// tenant comes back to its state before deletion; a purged one too, with
// its installations ready again (their dropped databases stay dropped).
func (s *Store) FinishRestoreSwap(ctx context.Context, restoreID, tenantID uuid.UUID, swapMS int64, actor string) error {
	return s.InTx(ctx, func(tx *Store) error {
		rows, err := tx.q.Query(ctx, `SELECT installation_id, current_database_id, restored_database_id, prior_state,
				coalesce(return_state, prior_state), as_installation_id
			FROM restore_items WHERE restore_id = $1 AND tenant_id = $2 AND state = 'copied' FOR UPDATE`, restoreID, tenantID)
		if err != nil {
			return fmt.Errorf("lock restore items: %w", err)
		}
		type item struct {
			inst, current, restored uuid.UUID
			prior, back             TenantState
			as                      *uuid.UUID
		}
		items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (item, error) {
			var it item
			return it, row.Scan(&it.inst, &it.current, &it.restored, &it.prior, &it.back, &it.as)
		})
		if err != nil {
			return fmt.Errorf("lock restore items: %w", err)
		}
		if len(items) == 0 {
			return nil
		}
		if items[0].as != nil {
			return tx.finishRestoreAs(ctx, restoreID, tenantID, swapMS, actor)
		}
		for _, it := range items {
			tag, err := tx.q.Exec(ctx, `UPDATE tenant_databases
				SET state = CASE state WHEN 'assigned' THEN 'replaced' ELSE state END, updated_at = now()
				WHERE id = $1 AND installation_id = $2 AND (state = 'assigned' OR (state = 'dropped' AND $3 = 'purged'))`,
				it.current, it.inst, it.prior)
			if err != nil {
				return fmt.Errorf("replace database: %w", err)
			}
			if tag.RowsAffected() != 1 {
				return Conflict("database_changed", "database %s is no longer the installation's: nothing swapped", it.current)
			}
			tag, err = tx.q.Exec(ctx, `UPDATE tenant_databases SET state = 'assigned', installation_id = $2, updated_at = now()
				WHERE id = $1 AND state IN ('creating', 'replaced')`, it.restored, it.inst)
			if err != nil {
				return mapError(fmt.Errorf("assign restored database: %w", err))
			}
			if tag.RowsAffected() != 1 {
				return Conflict("database_changed", "the restored database %s is gone or taken: nothing swapped", it.restored)
			}
			if it.prior == StatePurged {
				if err := tx.SetInstallationState(ctx, it.inst, InstallationReady); err != nil {
					return err
				}
			}
			if _, err := tx.q.Exec(ctx, `UPDATE restore_items SET state = 'swapped', swapped_at = now(), swap_ms = $3, updated_at = now()
				WHERE restore_id = $1 AND installation_id = $2`, restoreID, it.inst, swapMS); err != nil {
				return fmt.Errorf("mark restore item swapped: %w", err)
			}
		}
		from := StateRestoring
		if gone(items[0].prior) {
			from = items[0].prior
		}
		_, err = tx.Transition(ctx, TransitionParams{TenantID: tenantID, Action: "restore.swap", Actor: actor,
			From: []TenantState{from}, To: items[0].back, Reason: "restore " + restoreID.String()})
		return err
	})
}

// finishRestoreAs gives the copied items of a restore into a new tenant
// to that tenant's installations and makes it active; the tenant restored
// from is left as it is.
func (s *Store) finishRestoreAs(ctx context.Context, restoreID, tenantID uuid.UUID, swapMS int64, actor string) error {
	var as uuid.UUID
	if err := s.q.QueryRow(ctx, `SELECT as_tenant_id FROM restores WHERE id = $1`, restoreID).Scan(&as); err != nil {
		return fmt.Errorf("the new tenant of restore %s: %w", restoreID, err)
	}
	rows, err := s.q.Query(ctx, `UPDATE restore_items SET state = 'swapped', swapped_at = now(), swap_ms = $3, updated_at = now()
		WHERE restore_id = $1 AND tenant_id = $2 AND state = 'copied' RETURNING restored_database_id, as_installation_id`,
		restoreID, tenantID, swapMS)
	if err != nil {
		return fmt.Errorf("mark restore items swapped: %w", err)
	}
	pairs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) ([2]uuid.UUID, error) {
		var p [2]uuid.UUID
		return p, row.Scan(&p[0], &p[1])
	})
	if err != nil {
		return fmt.Errorf("mark restore items swapped: %w", err)
	}
	for _, p := range pairs {
		tag, err := s.q.Exec(ctx, `UPDATE tenant_databases SET state = 'assigned', installation_id = $2, updated_at = now()
			WHERE id = $1 AND state = 'creating'`, p[0], p[1])
		if err != nil {
			return mapError(fmt.Errorf("assign restored database: %w", err))
		}
		if tag.RowsAffected() != 1 {
			return Conflict("database_changed", "the restored database %s is gone: nothing swapped", p[0])
		}
		if err := s.SetInstallationState(ctx, p[1], InstallationReady); err != nil {
			return err
		}
		// AdoptAs stamped it with the new tenant: drills may sample it.
		if err := s.MarkStamped(ctx, p[1]); err != nil {
			return err
		}
	}
	_, err = s.Transition(ctx, TransitionParams{TenantID: as, Action: "restore.swap", Actor: actor,
		From: []TenantState{StateProvisioning}, To: StateActive, Reason: "restore " + restoreID.String()})
	return err
}

// AbortRestoreSwap fails the tenant's unfinished items and returns the
// tenant from restoring to its prior state, if it is restoring. The new
// tenant of a restore into one fails.
func (s *Store) AbortRestoreSwap(ctx context.Context, restoreID, tenantID uuid.UUID, prior TenantState, msg, actor string) error {
	return s.InTx(ctx, func(tx *Store) error {
		if _, err := tx.q.Exec(ctx, `UPDATE restore_items SET state = 'failed', error = $3, updated_at = now()
			WHERE restore_id = $1 AND tenant_id = $2 AND state IN ('pending', 'copied')`, restoreID, tenantID, truncate(msg, 2000)); err != nil {
			return fmt.Errorf("fail restore items: %w", err)
		}
		var as *uuid.UUID
		if err := tx.q.QueryRow(ctx, `SELECT as_tenant_id FROM restores WHERE id = $1`, restoreID).Scan(&as); err != nil {
			return fmt.Errorf("get restore: %w", err)
		}
		if as != nil {
			_, err := tx.Transition(ctx, TransitionParams{TenantID: *as, Action: "restore.abort", Actor: actor,
				From: []TenantState{StateProvisioning}, To: StateFailed, Reason: truncate(msg, 1000)})
			if errors.Is(err, ErrIllegalTransition) {
				err = nil // failed already
			}
			return err
		}
		t, err := tx.GetTenantByID(ctx, tenantID)
		if err != nil || t.State != StateRestoring {
			return err
		}
		_, err = tx.Transition(ctx, TransitionParams{TenantID: tenantID, Action: "restore.abort", Actor: actor,
			From: []TenantState{StateRestoring}, To: prior, Reason: truncate(msg, 1000)})
		return err
	})
}

// FinishRestore ends a restore whose items are all swapped or failed, and
// returns it.
func (s *Store) FinishRestore(ctx context.Context, id uuid.UUID, msg string) (Restore, error) {
	_, err := s.q.Exec(ctx, `
		WITH c AS (SELECT count(*) FILTER (WHERE state = 'swapped') AS ok, count(*) FILTER (WHERE state = 'failed') AS bad,
			count(*) FILTER (WHERE state IN ('pending', 'copied')) AS open FROM restore_items WHERE restore_id = $1)
		UPDATE restores SET state = CASE WHEN c.bad = 0 THEN 'succeeded' WHEN c.ok = 0 THEN 'failed' ELSE 'finished_with_failures' END,
			error = $2, finished_at = now(), updated_at = now()
		FROM c WHERE id = $1 AND state = 'running' AND c.open = 0`, id, truncate(msg, 2000))
	if err != nil {
		return Restore{}, fmt.Errorf("finish restore: %w", err)
	}
	return s.GetRestore(ctx, id)
}
