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

// CreateTenantParams describes a new tenant.
type CreateTenantParams struct {
	Slug        string
	DisplayName string   // defaults to the slug
	Region      string   // defaults to the only region, when there is one
	Tier        int      // 0 (most critical) to 3
	Products    []string // defaults to the default product
}

// CreateTenant inserts a tenant in state provisioning with one pending
// installation per product. Provisioning the databases is the provision
// package's job.
func (s *Store) CreateTenant(ctx context.Context, p CreateTenantParams) (Tenant, error) {
	if err := ValidateSlug(p.Slug); err != nil {
		return Tenant{}, err
	}
	if p.DisplayName == "" {
		p.DisplayName = p.Slug
	}
	if len(p.DisplayName) > 200 {
		return Tenant{}, Invalid("invalid_display_name", "display name must be at most 200 characters")
	}
	if p.Tier < 0 || p.Tier > 3 {
		return Tenant{}, Invalid("invalid_tier", "tier must be 0, 1, 2 or 3")
	}
	var err error
	if p.Region, err = s.resolveRegion(ctx, p.Region); err != nil {
		return Tenant{}, err
	}
	if p.Products, err = s.resolveProducts(ctx, p.Products); err != nil {
		return Tenant{}, err
	}
	var t Tenant
	err = s.InTx(ctx, func(tx *Store) error {
		id := uuid.Must(uuid.NewV7())
		if err := tx.insertTenant(ctx, id, p, time.Time{}); err != nil {
			return err
		}
		for _, prod := range p.Products {
			if err := tx.insertInstallation(ctx, uuid.Must(uuid.NewV7()), id, prod, InstallationPending, time.Time{}); err != nil {
				return err
			}
		}
		var err error
		t, err = tx.GetTenantByID(ctx, id)
		return err
	})
	return t, err
}

// insertTenant inserts a tenant in state provisioning, the only state a
// tenant can start in. A zero createdAt means now.
func (s *Store) insertTenant(ctx context.Context, id uuid.UUID, p CreateTenantParams, createdAt time.Time) error {
	_, err := s.q.Exec(ctx, `
		INSERT INTO tenants (id, slug, display_name, region, tier, state, created_at)
		VALUES ($1, $2, $3, $4, $5, 'provisioning', coalesce($6, now()))`,
		id, p.Slug, p.DisplayName, p.Region, p.Tier, orNow(createdAt))
	if err != nil {
		return mapError(fmt.Errorf("insert tenant: %w", err))
	}
	return nil
}

// insertInstallation inserts an installation of a tenant. A zero createdAt
// means now.
func (s *Store) insertInstallation(ctx context.Context, id, tenantID uuid.UUID, product string, state InstallationState, createdAt time.Time) error {
	_, err := s.q.Exec(ctx, `
		INSERT INTO installations (id, tenant_id, product, state, created_at)
		VALUES ($1, $2, $3, $4, coalesce($5, now()))`, id, tenantID, product, state, orNow(createdAt))
	if err != nil {
		return mapError(fmt.Errorf("insert installation: %w", err))
	}
	return nil
}

// orNow is nil (the column's default, now()) for a zero time.
func orNow(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *Store) resolveRegion(ctx context.Context, region string) (string, error) {
	if region != "" {
		ok, err := s.regionExists(ctx, region)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", Invalid("unknown_region", "region %q does not exist", truncate(region, 40))
		}
		return region, nil
	}
	regions, err := s.ListRegions(ctx)
	if err != nil {
		return "", err
	}
	if len(regions) != 1 {
		return "", Invalid("region_required", "name a region: there are %d to choose from", len(regions))
	}
	return regions[0].Name, nil
}

func (s *Store) resolveProducts(ctx context.Context, products []string) ([]string, error) {
	if len(products) == 0 {
		def, ok, err := s.DefaultProduct(ctx)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, Invalid("product_required", "name at least one product: no default product is registered")
		}
		return []string{def.Name}, nil
	}
	if len(products) > 50 {
		return nil, Invalid("invalid_products", "a tenant can be created with at most 50 products")
	}
	out := make([]string, 0, len(products))
	for _, name := range products {
		if slices.Contains(out, name) {
			return nil, Invalid("invalid_products", "product %q is listed twice", truncate(name, 40))
		}
		p, err := s.GetProduct(ctx, name)
		if IsCode(err, "product_not_found") {
			return nil, Invalid("unknown_product", "product %q does not exist", truncate(name, 40))
		}
		if err != nil {
			return nil, err
		}
		if p.CurrentVersion == 0 {
			return nil, Invalid("unknown_product", "product %q has no migrations", name)
		}
		out = append(out, name)
	}
	return out, nil
}

const tenantColumns = `id, slug, display_name, region, tier, state, state_reason,
	coalesce(state_before_delete, ''), created_at, updated_at, deleted_at, purge_after, purged_at`

func scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	err := row.Scan(&t.ID, &t.Slug, &t.DisplayName, &t.Region, &t.Tier, &t.State, &t.StateReason,
		&t.StateBeforeDelete, &t.CreatedAt, &t.UpdatedAt, &t.DeletedAt, &t.PurgeAfter, &t.PurgedAt)
	return t, err
}

// GetTenant returns a tenant named by ID or by slug (a slug names the
// tenant that is not purged; a purged tenant can be named by ID only).
func (s *Store) GetTenant(ctx context.Context, ref string) (Tenant, error) {
	if id, err := uuid.Parse(ref); err == nil {
		return s.GetTenantByID(ctx, id)
	}
	if len(ref) > 63 {
		return Tenant{}, NotFound("tenant_not_found", "tenant %q does not exist", truncate(ref, 40))
	}
	t, err := scanTenant(s.q.QueryRow(ctx,
		`SELECT `+tenantColumns+` FROM tenants WHERE slug = $1 AND state <> 'purged'`, ref))
	if isNoRows(err) {
		return Tenant{}, NotFound("tenant_not_found", "tenant %q does not exist", ref)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("get tenant: %w", err)
	}
	return t, s.loadInstallations(ctx, []*Tenant{&t})
}

// GetTenantByID returns a tenant by ID.
func (s *Store) GetTenantByID(ctx context.Context, id uuid.UUID) (Tenant, error) {
	t, err := scanTenant(s.q.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id))
	if isNoRows(err) {
		return Tenant{}, NotFound("tenant_not_found", "tenant %s does not exist", id)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("get tenant: %w", err)
	}
	return t, s.loadInstallations(ctx, []*Tenant{&t})
}

func (s *Store) loadInstallations(ctx context.Context, ts []*Tenant) error {
	if len(ts) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(ts))
	byID := make(map[uuid.UUID]*Tenant, len(ts))
	for i, t := range ts {
		ids[i], byID[t.ID] = t.ID, t
		t.Installations = []Installation{}
	}
	rows, err := s.q.Query(ctx, `
		SELECT i.id, i.tenant_id, i.product, i.state, i.created_at, i.updated_at,
			d.id, coalesce(d.shard, ''), coalesce(d.name, ''), coalesce(d.schema_version, 0)
		FROM installations i
		LEFT JOIN tenant_databases d ON d.installation_id = i.id AND d.state IN ('creating', 'assigned')
		WHERE i.tenant_id = ANY($1)
		ORDER BY i.tenant_id, i.product`, ids)
	if err != nil {
		return fmt.Errorf("load installations: %w", err)
	}
	insts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Installation, error) {
		var in Installation
		err := row.Scan(&in.ID, &in.TenantID, &in.Product, &in.State, &in.CreatedAt, &in.UpdatedAt,
			&in.DatabaseID, &in.Shard, &in.Database, &in.SchemaVersion)
		return in, err
	})
	if err != nil {
		return fmt.Errorf("load installations: %w", err)
	}
	for _, in := range insts {
		t := byID[in.TenantID]
		t.Installations = append(t.Installations, in)
	}
	return nil
}

// TenantFilter selects tenants for ListTenants.
type TenantFilter struct {
	State   TenantState
	Region  string
	Shard   string
	Product string
	After   uuid.UUID // cursor: return tenants after this ID
	Limit   int       // 1 to 500; 0 means 100
}

// ListTenants returns tenants in ID (creation) order, and the cursor for the
// next page, or uuid.Nil when this is the last page.
func (s *Store) ListTenants(ctx context.Context, f TenantFilter) ([]Tenant, uuid.UUID, error) {
	if f.Limit == 0 {
		f.Limit = 100
	}
	if f.Limit < 1 || f.Limit > 500 {
		return nil, uuid.Nil, Invalid("invalid_limit", "limit must be between 1 and 500")
	}
	if f.State != "" && !f.State.Valid() {
		return nil, uuid.Nil, Invalid("invalid_state", "unknown tenant state %q", truncate(string(f.State), 40))
	}
	rows, err := s.q.Query(ctx, `
		SELECT `+tenantColumns+` FROM tenants t
		WHERE ($1 = '' OR t.state = $1)
		  AND ($2 = '' OR t.region = $2)
		  AND ($3 = '' OR EXISTS (
			SELECT 1 FROM installations i JOIN tenant_databases d ON d.installation_id = i.id
			WHERE i.tenant_id = t.id AND d.shard = $3 AND d.state IN ('creating', 'assigned')))
		  AND ($4 = '' OR EXISTS (SELECT 1 FROM installations i WHERE i.tenant_id = t.id AND i.product = $4))
		  AND t.id > $5
		ORDER BY t.id
		LIMIT $6`, string(f.State), f.Region, f.Shard, f.Product, f.After, f.Limit+1)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("list tenants: %w", err)
	}
	ts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Tenant, error) { return scanTenant(row) })
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("list tenants: %w", err)
	}
	next := uuid.Nil
	if len(ts) > f.Limit {
		ts = ts[:f.Limit]
		next = ts[len(ts)-1].ID
	}
	ptrs := make([]*Tenant, len(ts))
	for i := range ts {
		ptrs[i] = &ts[i]
	}
	return ts, next, s.loadInstallations(ctx, ptrs)
}

// TransitionParams describes a lifecycle transition.
type TransitionParams struct {
	TenantID  uuid.UUID
	Action    string        // the audit action, e.g. "suspend" or "provision.succeeded"
	From      []TenantState // states the transition applies to
	To        TenantState
	Reason    string
	Actor     string
	RequestID string
	// Retention is how long a deleted tenant's data is kept (To == deleted).
	Retention time.Duration
}

// ErrIllegalTransition is wrapped by the error Transition returns when the
// tenant is not in one of the From states.
var ErrIllegalTransition = errors.New("illegal transition")

// illegalTransition is the conflict of a tenant not in a state an action
// applies to; it wraps ErrIllegalTransition.
func illegalTransition(format string, args ...any) error {
	return &Error{Kind: KindConflict, Code: "illegal_transition", Err: ErrIllegalTransition, Message: fmt.Sprintf(format, args...)}
}

// Transition moves a tenant from one of p.From to p.To and writes the audit
// record, in one transaction. Moving to deleted records when the data may be
// purged; leaving deleted (undelete) returns to p.To, which the caller takes
// from the tenant's StateBeforeDelete.
func (s *Store) Transition(ctx context.Context, p TransitionParams) (Tenant, error) {
	if len(p.Reason) > 1000 {
		return Tenant{}, Invalid("invalid_reason", "reason must be at most 1000 characters")
	}
	var t Tenant
	err := s.InTx(ctx, func(tx *Store) error {
		cur, err := scanTenant(tx.q.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1 FOR UPDATE`, p.TenantID))
		if isNoRows(err) {
			return NotFound("tenant_not_found", "tenant %s does not exist", p.TenantID)
		}
		if err != nil {
			return fmt.Errorf("lock tenant: %w", err)
		}
		if !slices.Contains(p.From, cur.State) {
			return illegalTransition("cannot %s tenant %s: it is %s", p.Action, cur.Slug, cur.State)
		}
		switch {
		case p.To == StateDeleted:
			_, err = tx.q.Exec(ctx, `
				UPDATE tenants SET state = 'deleted', state_reason = $2, state_before_delete = state,
					deleted_at = now(), purge_after = now() + $3::bigint * interval '1 microsecond'
				WHERE id = $1`, p.TenantID, p.Reason, p.Retention.Microseconds())
		case p.To == StatePurged:
			_, err = tx.q.Exec(ctx, `
				UPDATE tenants SET state = 'purged', state_reason = $2, purged_at = now(), purge_after = NULL
				WHERE id = $1`, p.TenantID, p.Reason)
		case cur.State == StateDeleted || cur.State == StatePurged: // undelete, or a restore
			_, err = tx.q.Exec(ctx, `
				UPDATE tenants SET state = $2, state_reason = $3, state_before_delete = NULL,
					deleted_at = NULL, purge_after = NULL, purged_at = NULL
				WHERE id = $1`, p.TenantID, p.To, p.Reason)
		default:
			_, err = tx.q.Exec(ctx, `UPDATE tenants SET state = $2, state_reason = $3 WHERE id = $1`,
				p.TenantID, p.To, p.Reason)
		}
		if err != nil {
			return mapError(fmt.Errorf("%s tenant: %w", p.Action, err))
		}
		if err := tx.Audit(ctx, AuditEntry{
			Actor: p.Actor, Action: "tenant." + p.Action, TargetKind: "tenant", TargetID: p.TenantID.String(),
			FromState: string(cur.State), ToState: string(p.To), Reason: p.Reason, RequestID: p.RequestID,
		}); err != nil {
			return err
		}
		t, err = tx.GetTenantByID(ctx, p.TenantID)
		return err
	})
	return t, err
}

// ExpiredTenants returns deleted tenants whose retention window has ended,
// leaving out those being purged or restored and those whose purge failed
// in the last hour (they are retried later, and must not hold up the others).
func (s *Store) ExpiredTenants(ctx context.Context, limit int) ([]uuid.UUID, error) {
	rows, err := s.q.Query(ctx, `
		SELECT t.id FROM tenants t WHERE t.state = 'deleted' AND t.purge_after <= now()
		  AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.tenant_id = t.id AND o.kind = 'purge'
			AND (o.state = 'running' OR (o.state = 'failed' AND o.finished_at > now() - interval '1 hour')))
		  AND NOT EXISTS (SELECT 1 FROM restore_items r WHERE r.tenant_id = t.id AND r.state IN ('pending', 'copied'))
		ORDER BY t.purge_after LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("expired tenants: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// CountTenants returns how many tenants are in each state.
func (s *Store) CountTenants(ctx context.Context) (map[TenantState]int, error) {
	rows, err := s.q.Query(ctx, `SELECT state, count(*) FROM tenants GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count tenants: %w", err)
	}
	defer rows.Close()
	out := map[TenantState]int{}
	for rows.Next() {
		var st TenantState
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}
