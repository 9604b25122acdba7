package catalog

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Service is a service of a product or of the platform, and how it may be called.
type Service struct {
	Name           string   `json:"name"`
	AllowedCallers []string `json:"allowed_callers"`
	// Routes are the path prefixes the edge sends to this service, and
	// Product the product whose tenant database it serves.
	Routes           []string  `json:"routes"`
	Product          string    `json:"product,omitempty"`
	ReplayProtection bool      `json:"replay_protection"`
	CallerRateLimit  int       `json:"caller_rate_limit"`
	TenantRateLimit  int       `json:"tenant_rate_limit"`
	KeyGeneration    int       `json:"key_generation"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// ServiceParams are the settable parts of a service.
type ServiceParams struct {
	Name             string
	AllowedCallers   []string
	Routes           []string
	Product          string
	ReplayProtection bool
	CallerRateLimit  int
	TenantRateLimit  int
}

// ServiceKey is a public key in the key repository.
type ServiceKey struct {
	Kid       string     `json:"kid"`
	Service   string     `json:"service"`
	Alg       string     `json:"alg"`
	PublicKey string     `json:"public_key"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// Endpoint is a live instance of a service.
type Endpoint struct {
	ID      uuid.UUID `json:"id"`
	Address string    `json:"address"`
}

func (p *ServiceParams) validate() error {
	if err := ValidateName("service", p.Name); err != nil {
		return err
	}
	if len(p.AllowedCallers) > 100 {
		return Invalid("invalid_callers", "at most 100 allowed callers")
	}
	for _, c := range p.AllowedCallers {
		if err := ValidateName("caller", c); err != nil {
			return err
		}
	}
	slices.Sort(p.AllowedCallers)
	p.AllowedCallers = slices.Compact(p.AllowedCallers)
	if p.AllowedCallers == nil {
		p.AllowedCallers = []string{}
	}
	if len(p.Routes) > 50 {
		return Invalid("invalid_routes", "at most 50 routes")
	}
	for _, r := range p.Routes {
		if !routePattern.MatchString(r) || strings.Contains(r, "//") || strings.Contains(r, "/../") || strings.HasSuffix(r, "/..") {
			return Invalid("invalid_routes", "route %q must be a path prefix such as /notes", truncate(r, 60))
		}
	}
	slices.Sort(p.Routes)
	p.Routes = slices.Compact(p.Routes)
	if p.Routes == nil {
		p.Routes = []string{}
	}
	if p.Product != "" {
		if err := ValidateProductName(p.Product); err != nil {
			return err
		}
	}
	if p.CallerRateLimit < 0 || p.TenantRateLimit < 0 || p.CallerRateLimit > 1_000_000 || p.TenantRateLimit > 1_000_000 {
		return Invalid("invalid_rate_limit", "rate limits must be between 0 (none) and 1000000 requests per second")
	}
	return nil
}

var routePattern = regexp.MustCompile(`^/[A-Za-z0-9._~/-]{0,200}$`)

const serviceColumns = `name, allowed_callers, routes, coalesce(product, ''), replay_protection, caller_rate_limit,
	tenant_rate_limit, key_generation, created_at, updated_at`

func scanService(row pgx.Row) (Service, error) {
	var s Service
	err := row.Scan(&s.Name, &s.AllowedCallers, &s.Routes, &s.Product, &s.ReplayProtection, &s.CallerRateLimit,
		&s.TenantRateLimit, &s.KeyGeneration, &s.CreatedAt, &s.UpdatedAt)
	return s, err
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// HashCredential is how the catalog keeps a registration credential.
func HashCredential(credential string) []byte {
	sum := sha256.Sum256([]byte(credential))
	return sum[:]
}

// CreateService registers a service with the hash of its registration credential.
func (s *Store) CreateService(ctx context.Context, p ServiceParams, credentialHash []byte) (Service, error) {
	if err := p.validate(); err != nil {
		return Service{}, err
	}
	svc, err := scanService(s.q.QueryRow(ctx, `
		INSERT INTO services (name, allowed_callers, routes, product, replay_protection, caller_rate_limit, tenant_rate_limit, credential_hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING `+serviceColumns,
		p.Name, p.AllowedCallers, p.Routes, nullable(p.Product), p.ReplayProtection, p.CallerRateLimit, p.TenantRateLimit, credentialHash))
	if err != nil {
		err = mapError(fmt.Errorf("create service: %w", err))
		switch {
		case IsCode(err, "conflict"):
			return Service{}, Conflict("service_exists", "service %q already exists", p.Name)
		case IsCode(err, "not_found"):
			return Service{}, Invalid("unknown_product", "product %q does not exist", p.Product)
		}
		return Service{}, err
	}
	return svc, nil
}

// UpdateService replaces a service's allow-list, replay protection and limits.
func (s *Store) UpdateService(ctx context.Context, p ServiceParams) (Service, error) {
	if err := p.validate(); err != nil {
		return Service{}, err
	}
	svc, err := scanService(s.q.QueryRow(ctx, `
		UPDATE services SET allowed_callers = $2, replay_protection = $3, caller_rate_limit = $4,
			tenant_rate_limit = $5, routes = $6, product = $7, updated_at = now()
		WHERE name = $1 RETURNING `+serviceColumns,
		p.Name, p.AllowedCallers, p.ReplayProtection, p.CallerRateLimit, p.TenantRateLimit, p.Routes, nullable(p.Product)))
	if IsCode(mapError(err), "not_found") {
		return Service{}, Invalid("unknown_product", "product %q does not exist", p.Product)
	}
	if isNoRows(err) {
		return Service{}, NotFound("service_not_found", "service %q does not exist", truncate(p.Name, 40))
	}
	if err != nil {
		return Service{}, fmt.Errorf("update service: %w", err)
	}
	return svc, nil
}

// GetService returns one service.
func (s *Store) GetService(ctx context.Context, name string) (Service, error) {
	svc, err := scanService(s.q.QueryRow(ctx, `SELECT `+serviceColumns+` FROM services WHERE name = $1`, name))
	if isNoRows(err) {
		return Service{}, NotFound("service_not_found", "service %q does not exist", truncate(name, 40))
	}
	if err != nil {
		return Service{}, fmt.Errorf("get service: %w", err)
	}
	return svc, nil
}

// ListServices returns all services by name.
func (s *Store) ListServices(ctx context.Context) ([]Service, error) {
	rows, err := s.q.Query(ctx, `SELECT `+serviceColumns+` FROM services ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Service, error) { return scanService(row) })
}

// CheckCredential reports whether credential is service's registration
// credential, in constant time.
func (s *Store) CheckCredential(ctx context.Context, service, credential string) (bool, error) {
	var hash []byte
	err := s.q.QueryRow(ctx, `SELECT credential_hash FROM services WHERE name = $1`, service).Scan(&hash)
	if isNoRows(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check credential: %w", err)
	}
	return subtle.ConstantTimeCompare(hash, HashCredential(credential)) == 1, nil
}

// SetCredential replaces a service's registration credential (by its hash).
func (s *Store) SetCredential(ctx context.Context, service string, credentialHash []byte) error {
	tag, err := s.q.Exec(ctx, `UPDATE services SET credential_hash = $2, updated_at = now() WHERE name = $1`, service, credentialHash)
	if err != nil {
		return fmt.Errorf("set credential: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return NotFound("service_not_found", "service %q does not exist", truncate(service, 40))
	}
	return nil
}

// RotateKeys asks a service's sidecars to make and publish new keys.
func (s *Store) RotateKeys(ctx context.Context, service string) (Service, error) {
	svc, err := scanService(s.q.QueryRow(ctx, `
		UPDATE services SET key_generation = key_generation + 1, updated_at = now()
		WHERE name = $1 RETURNING `+serviceColumns, service))
	if isNoRows(err) {
		return Service{}, NotFound("service_not_found", "service %q does not exist", truncate(service, 40))
	}
	if err != nil {
		return Service{}, fmt.Errorf("rotate keys: %w", err)
	}
	return svc, nil
}

// AddKey publishes a public key of service. Publishing the same key again
// changes nothing; a different key under an existing kid is refused.
func (s *Store) AddKey(ctx context.Context, service, kid, alg, pem string) error {
	tag, err := s.q.Exec(ctx, `
		INSERT INTO service_keys (kid, service, alg, public_key) VALUES ($1, $2, $3, $4)
		ON CONFLICT (kid) DO NOTHING`, kid, service, alg, pem)
	if err != nil {
		return mapError(fmt.Errorf("add key: %w", err))
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var existing string
	if err := s.q.QueryRow(ctx, `SELECT public_key FROM service_keys WHERE kid = $1`, kid).Scan(&existing); err != nil {
		return fmt.Errorf("add key: %w", err)
	}
	if existing != pem {
		return Conflict("kid_exists", "key %s is already published with a different public key", kid)
	}
	return nil
}

const keyColumns = `kid, service, alg, public_key, created_at, expires_at`

func scanKey(row pgx.Row) (ServiceKey, error) {
	var k ServiceKey
	err := row.Scan(&k.Kid, &k.Service, &k.Alg, &k.PublicKey, &k.CreatedAt, &k.ExpiresAt)
	return k, err
}

// Key returns a published key that has not expired.
func (s *Store) Key(ctx context.Context, kid string) (ServiceKey, error) {
	k, err := scanKey(s.q.QueryRow(ctx, `SELECT `+keyColumns+` FROM service_keys
		WHERE kid = $1 AND (expires_at IS NULL OR expires_at > now())`, kid))
	if isNoRows(err) {
		return ServiceKey{}, NotFound("key_not_found", "key %s is not in the key repository", truncate(kid, 80))
	}
	if err != nil {
		return ServiceKey{}, fmt.Errorf("get key: %w", err)
	}
	return k, nil
}

// Keys returns a service's published keys that have not expired.
func (s *Store) Keys(ctx context.Context, service string) ([]ServiceKey, error) {
	rows, err := s.q.Query(ctx, `SELECT `+keyColumns+` FROM service_keys
		WHERE service = $1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY created_at`, service)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ServiceKey, error) { return scanKey(row) })
}

// RegisterInstance records a live instance of service that signs with kid.
func (s *Store) RegisterInstance(ctx context.Context, service string, id uuid.UUID, address, kid string) error {
	return s.InTx(ctx, func(tx *Store) error {
		if _, err := tx.q.Exec(ctx, `
			INSERT INTO service_instances (id, service, address, kid) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET address = excluded.address, kid = excluded.kid
			WHERE service_instances.service = excluded.service`, id, service, address, kid); err != nil {
			return mapError(fmt.Errorf("register instance: %w", err))
		}
		_, err := tx.q.Exec(ctx, `INSERT INTO service_instance_heartbeats (instance_id) VALUES ($1)
			ON CONFLICT (instance_id) DO UPDATE SET seen_at = now()`, id)
		return err
	})
}

// SetInstanceKey makes kid the signing key of an instance and lets its
// previous key expire after grace, when no token signed with it is valid.
func (s *Store) SetInstanceKey(ctx context.Context, service string, id uuid.UUID, kid string, grace time.Duration) error {
	return s.InTx(ctx, func(tx *Store) error {
		var old string
		err := tx.q.QueryRow(ctx, `SELECT kid FROM service_instances WHERE id = $1 AND service = $2 FOR UPDATE`, id, service).Scan(&old)
		if isNoRows(err) {
			return NotFound("instance_not_found", "instance %s of %s is not registered", id, service)
		}
		if err != nil {
			return fmt.Errorf("set instance key: %w", err)
		}
		if old == kid {
			return nil
		}
		if _, err := tx.q.Exec(ctx, `UPDATE service_instances SET kid = $2 WHERE id = $1`, id, kid); err != nil {
			return mapError(fmt.Errorf("set instance key: %w", err))
		}
		return tx.expireKeys(ctx, []string{old}, grace)
	})
}

func (s *Store) expireKeys(ctx context.Context, kids []string, grace time.Duration) error {
	_, err := s.q.Exec(ctx, `
		UPDATE service_keys SET expires_at = now() + $2::bigint * interval '1 microsecond'
		WHERE kid = ANY($1) AND (expires_at IS NULL OR expires_at > now() + $2::bigint * interval '1 microsecond')`,
		kids, grace.Microseconds())
	if err != nil {
		return fmt.Errorf("expire keys: %w", err)
	}
	return nil
}

// Heartbeat records that an instance is alive; it reports false when the
// instance is not registered (it was swept, and must register again).
func (s *Store) Heartbeat(ctx context.Context, service string, id uuid.UUID) (bool, error) {
	tag, err := s.q.Exec(ctx, `
		UPDATE service_instance_heartbeats h SET seen_at = now()
		FROM service_instances i WHERE i.id = h.instance_id AND i.id = $1 AND i.service = $2`, id, service)
	if err != nil {
		return false, fmt.Errorf("heartbeat: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeregisterInstance removes an instance; its key expires after grace.
func (s *Store) DeregisterInstance(ctx context.Context, service string, id uuid.UUID, grace time.Duration) error {
	return s.InTx(ctx, func(tx *Store) error {
		var kid string
		err := tx.q.QueryRow(ctx, `DELETE FROM service_instances WHERE id = $1 AND service = $2 RETURNING kid`, id, service).Scan(&kid)
		if isNoRows(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deregister instance: %w", err)
		}
		return tx.expireKeys(ctx, []string{kid}, grace)
	})
}

// Endpoints returns the instances of service seen within ttl.
func (s *Store) Endpoints(ctx context.Context, service string, ttl time.Duration) ([]Endpoint, error) {
	rows, err := s.q.Query(ctx, `
		SELECT i.id, i.address FROM service_instances i JOIN service_instance_heartbeats h ON h.instance_id = i.id
		WHERE i.service = $1 AND h.seen_at > now() - $2::bigint * interval '1 microsecond'
		ORDER BY i.address, i.id`, service, ttl.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("endpoints: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Endpoint, error) {
		var e Endpoint
		return e, row.Scan(&e.ID, &e.Address)
	})
}

// SweepInstances removes instances not seen for longer than dead, letting
// their keys expire after grace, and deletes keys expired for a day. It
// returns how many instances it removed.
func (s *Store) SweepInstances(ctx context.Context, dead, grace time.Duration) (int, error) {
	var n int
	err := s.InTx(ctx, func(tx *Store) error {
		rows, err := tx.q.Query(ctx, `
			DELETE FROM service_instances i USING service_instance_heartbeats h
			WHERE h.instance_id = i.id AND h.seen_at < now() - $1::bigint * interval '1 microsecond'
			RETURNING i.kid`, dead.Microseconds())
		if err != nil {
			return fmt.Errorf("sweep instances: %w", err)
		}
		kids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		n = len(kids)
		if err := tx.expireKeys(ctx, kids, grace); err != nil {
			return err
		}
		_, err = tx.q.Exec(ctx, `DELETE FROM service_keys k WHERE expires_at < now() - interval '1 day'
			AND NOT EXISTS (SELECT 1 FROM service_instances i WHERE i.kid = k.kid)`)
		return err
	})
	return n, err
}

// Route sends requests whose path starts with Prefix to Service.
type Route struct {
	Prefix  string `json:"prefix"`
	Service string `json:"service"`
	Product string `json:"product,omitempty"`
}

// Routes returns the edge's route table, longest prefix first.
func (s *Store) Routes(ctx context.Context) ([]Route, error) {
	rows, err := s.q.Query(ctx, `
		SELECT r.prefix, s.name, coalesce(s.product, '') FROM services s, unnest(s.routes) AS r(prefix)
		ORDER BY length(r.prefix) DESC, r.prefix, s.name`)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Route, error) {
		var r Route
		return r, row.Scan(&r.Prefix, &r.Service, &r.Product)
	})
}
