package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Domain is a custom domain a tenant claims; the edge serves it once the
// tenant has proved it controls it (VerifiedAt set).
type Domain struct {
	Domain     string     `json:"domain"`
	TenantID   uuid.UUID  `json:"tenant_id"`
	Token      string     `json:"token"`
	VerifiedAt *time.Time `json:"verified_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
}

var domainPattern = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$`)

// NormalizeDomain lower-cases a domain, drops a trailing dot, and checks it
// is an ASCII host name (IDNs must be given in their xn-- form).
func NormalizeDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	if len(d) < 4 || len(d) > 253 || !domainPattern.MatchString(d) {
		return "", Invalid("invalid_domain", "%q is not a domain name like www.example.com", truncate(d, 60))
	}
	return d, nil
}

const domainColumns = `domain, tenant_id, token, verified_at, created_at`

func scanDomain(row pgx.Row) (Domain, error) {
	var d Domain
	return d, row.Scan(&d.Domain, &d.TenantID, &d.Token, &d.VerifiedAt, &d.CreatedAt)
}

// AddDomain records a tenant's claim on a domain and the token it must
// publish to prove control. Claiming again returns the same claim; a domain
// another tenant already proved is refused.
func (s *Store) AddDomain(ctx context.Context, tenantID uuid.UUID, domain string) (Domain, error) {
	domain, err := NormalizeDomain(domain)
	if err != nil {
		return Domain{}, err
	}
	var owner uuid.UUID
	err = s.q.QueryRow(ctx, `SELECT tenant_id FROM tenant_domains WHERE domain = $1 AND verified_at IS NOT NULL`, domain).Scan(&owner)
	if err == nil && owner != tenantID {
		return Domain{}, Conflict("domain_taken", "%s is already served for another tenant", domain)
	}
	if err != nil && !isNoRows(err) {
		return Domain{}, fmt.Errorf("add domain: %w", err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	_, err = s.q.Exec(ctx, `INSERT INTO tenant_domains (domain, tenant_id, token) VALUES ($1, $2, $3)
		ON CONFLICT (domain, tenant_id) DO NOTHING`, domain, tenantID, "plinth-verify="+hex.EncodeToString(b))
	if err != nil {
		return Domain{}, mapError(fmt.Errorf("add domain: %w", err))
	}
	return s.GetDomain(ctx, tenantID, domain)
}

// GetDomain returns a tenant's claim on a domain.
func (s *Store) GetDomain(ctx context.Context, tenantID uuid.UUID, domain string) (Domain, error) {
	d, err := scanDomain(s.q.QueryRow(ctx, `SELECT `+domainColumns+` FROM tenant_domains WHERE domain = $1 AND tenant_id = $2`,
		strings.ToLower(domain), tenantID))
	if isNoRows(err) {
		return Domain{}, NotFound("domain_not_found", "the tenant has not claimed %s", truncate(domain, 60))
	}
	if err != nil {
		return Domain{}, fmt.Errorf("get domain: %w", err)
	}
	return d, nil
}

// MarkDomainVerified records that the tenant proved control of the domain.
// If another tenant proved it first, the claim is refused.
func (s *Store) MarkDomainVerified(ctx context.Context, tenantID uuid.UUID, domain string) (Domain, error) {
	_, err := s.q.Exec(ctx, `UPDATE tenant_domains SET verified_at = coalesce(verified_at, now())
		WHERE domain = $1 AND tenant_id = $2`, domain, tenantID)
	if IsCode(mapError(err), "conflict") {
		return Domain{}, Conflict("domain_taken", "%s is already served for another tenant", domain)
	}
	if err != nil {
		return Domain{}, fmt.Errorf("verify domain: %w", err)
	}
	return s.GetDomain(ctx, tenantID, domain)
}

// RemoveDomain drops a tenant's claim on a domain.
func (s *Store) RemoveDomain(ctx context.Context, tenantID uuid.UUID, domain string) error {
	tag, err := s.q.Exec(ctx, `DELETE FROM tenant_domains WHERE domain = $1 AND tenant_id = $2`, strings.ToLower(domain), tenantID)
	if err != nil {
		return fmt.Errorf("remove domain: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return NotFound("domain_not_found", "the tenant has not claimed %s", truncate(domain, 60))
	}
	return nil
}

// Domains returns the tenants' domain claims, by tenant.
func (s *Store) Domains(ctx context.Context, tenantIDs []uuid.UUID) (map[uuid.UUID][]Domain, error) {
	rows, err := s.q.Query(ctx, `SELECT `+domainColumns+` FROM tenant_domains WHERE tenant_id = ANY($1) ORDER BY domain`, tenantIDs)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	ds, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Domain, error) { return scanDomain(row) })
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID][]Domain{}
	for _, d := range ds {
		out[d.TenantID] = append(out[d.TenantID], d)
	}
	return out, nil
}

// DomainTenant returns the tenant a verified domain belongs to.
func (s *Store) DomainTenant(ctx context.Context, domain string) (uuid.UUID, bool, error) {
	var id uuid.UUID
	err := s.q.QueryRow(ctx, `SELECT tenant_id FROM tenant_domains WHERE domain = $1 AND verified_at IS NOT NULL`, domain).Scan(&id)
	if isNoRows(err) {
		return uuid.Nil, false, nil
	}
	if err != nil {
		return uuid.Nil, false, fmt.Errorf("domain tenant: %w", err)
	}
	return id, true, nil
}

// LatestVersion is the change-log version of the newest committed change.
func (s *Store) LatestVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := s.q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM change_log`).Scan(&v); err != nil {
		return 0, fmt.Errorf("latest version: %w", err)
	}
	return v, nil
}

// PrunedThrough is the highest change-log version pruned: a reader resuming
// from below it has missed changes and must reload.
func (s *Store) PrunedThrough(ctx context.Context) (int64, error) {
	var v int64
	if err := s.q.QueryRow(ctx, `SELECT pruned_through FROM change_log_pruned`).Scan(&v); err != nil {
		return 0, fmt.Errorf("pruned through: %w", err)
	}
	return v, nil
}

// PruneChanges deletes change-log rows committed longer ago than retention
// and records how far it pruned. It returns how many rows it deleted.
func (s *Store) PruneChanges(ctx context.Context, retention time.Duration) (int64, error) {
	var n int64
	err := s.InTx(ctx, func(tx *Store) error {
		var through *int64
		err := tx.q.QueryRow(ctx, `
			WITH gone AS (
				DELETE FROM change_log WHERE version IS NOT NULL
				  AND committed_at < now() - $1::bigint * interval '1 microsecond'
				RETURNING version)
			SELECT max(version), count(*) FROM gone`, retention.Microseconds()).Scan(&through, &n)
		if err != nil || through == nil {
			return err
		}
		_, err = tx.q.Exec(ctx, `UPDATE change_log_pruned SET pruned_through = greatest(pruned_through, $1)`, *through)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune change log: %w", err)
	}
	return n, nil
}

// ReadSnapshot runs fn in a read-only transaction that sees one consistent
// snapshot, so that what it reads and the change-log version it reads agree.
func (s *Store) ReadSnapshot(ctx context.Context, fn func(tx *Store) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin snapshot: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	return fn(&Store{pool: s.pool, q: tx, tx: tx})
}
