package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

var (
	productPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{1,29}$`)
	// plinthSchemaRef spots a reference to the plinth schema (plinth.x or "plinth".x).
	plinthSchemaRef = regexp.MustCompile(`(?i)(^|[^a-z0-9_$])"?plinth"?\s*\.`)
)

// Limits on registered migrations.
const (
	MaxMigrationBytes = 1 << 20 // one migration's SQL
	MaxMigrations     = 1000    // migrations per product
)

// ValidateProductName checks a product name: 2 to 30 lower-case letters,
// digits and underscores, starting with a letter (it becomes part of
// template database names).
func ValidateProductName(name string) error {
	if !productPattern.MatchString(name) {
		return Invalid("invalid_product_name",
			"product name %q must be 2 to 30 lower-case letters, digits and underscores, starting with a letter", truncate(name, 40))
	}
	return nil
}

// RegisterProductParams describes a product registration.
type RegisterProductParams struct {
	Name         string
	Migrations   []Migration
	WarmPoolSize *int // nil keeps the current size (0 for a new product)
	Default      bool // make this the default product
}

// Checksum returns the checksum the catalog keeps of a migration's SQL.
func Checksum(sql string) string {
	sum := sha256.Sum256([]byte(sql))
	return hex.EncodeToString(sum[:])
}

func validateMigrations(ms []Migration) error {
	if len(ms) == 0 {
		return Invalid("invalid_migrations", "a product needs at least one migration")
	}
	if len(ms) > MaxMigrations {
		return Invalid("invalid_migrations", "a product can have at most %d migrations", MaxMigrations)
	}
	for i, m := range ms {
		switch {
		case m.Version <= 0:
			return Invalid("invalid_migrations", "migration %q: version must be positive", m.Name)
		case i > 0 && m.Version <= ms[i-1].Version:
			return Invalid("invalid_migrations", "migration versions must be unique and increasing (%d after %d)", m.Version, ms[i-1].Version)
		case strings.TrimSpace(m.Name) == "" || len(m.Name) > 255:
			return Invalid("invalid_migrations", "migration %d needs a name of at most 255 characters", m.Version)
		case len(m.SQL) > MaxMigrationBytes:
			return Invalid("invalid_migrations", "migration %d is larger than %d bytes", m.Version, MaxMigrationBytes)
		case !strings.Contains(m.SQL, "-- +goose Up"):
			return Invalid("invalid_migrations", "migration %d lacks a '-- +goose Up' annotation", m.Version)
		case plinthSchemaRef.MatchString(m.SQL):
			return Invalid("invalid_migrations", "migration %d touches the plinth schema, which Plinth owns", m.Version)
		}
	}
	return nil
}

// RegisterProduct creates a product or appends migrations to it. Migration
// history is append-only: every registered version must be given again,
// unchanged, and new versions must come after the current one. It reports
// whether anything changed.
func (s *Store) RegisterProduct(ctx context.Context, p RegisterProductParams) (Product, bool, error) {
	if err := ValidateProductName(p.Name); err != nil {
		return Product{}, false, err
	}
	if err := validateMigrations(p.Migrations); err != nil {
		return Product{}, false, err
	}
	if p.WarmPoolSize != nil && (*p.WarmPoolSize < 0 || *p.WarmPoolSize > 1000) {
		return Product{}, false, Invalid("invalid_size", "warm pool size must be between 0 and 1000")
	}
	changed := false
	err := s.InTx(ctx, func(tx *Store) error {
		tag, err := tx.q.Exec(ctx, `INSERT INTO products (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, p.Name)
		if err != nil {
			return fmt.Errorf("insert product: %w", err)
		}
		changed = tag.RowsAffected() > 0
		var current int64
		if err := tx.q.QueryRow(ctx, `SELECT current_version FROM products WHERE name = $1 FOR UPDATE`, p.Name).Scan(&current); err != nil {
			return fmt.Errorf("lock product: %w", err)
		}
		existing, err := tx.Migrations(ctx, p.Name, 0)
		if err != nil {
			return err
		}
		given := make(map[int64]Migration, len(p.Migrations))
		for _, m := range p.Migrations {
			given[m.Version] = m
		}
		for _, old := range existing {
			m, ok := given[old.Version]
			if !ok {
				return Conflict("migration_missing",
					"migration %d (%s) is registered but missing from the new set; history is append-only", old.Version, old.Name)
			}
			if Checksum(m.SQL) != old.Checksum {
				return Conflict("migration_changed",
					"migration %d (%s) differs from the registered one; add a new migration instead", old.Version, old.Name)
			}
		}
		registered := make(map[int64]bool, len(existing))
		for _, old := range existing {
			registered[old.Version] = true
		}
		for _, m := range p.Migrations {
			if m.Version <= current {
				if !registered[m.Version] {
					return Conflict("migration_out_of_order",
						"migration %d (%s) comes before the current version %d: new migrations must come after it", m.Version, m.Name, current)
				}
				continue
			}
			if _, err := tx.q.Exec(ctx,
				`INSERT INTO product_migrations (product, version, name, sql, checksum) VALUES ($1, $2, $3, $4, $5)`,
				p.Name, m.Version, m.Name, m.SQL, Checksum(m.SQL)); err != nil {
				return fmt.Errorf("insert migration %d: %w", m.Version, err)
			}
			current, changed = m.Version, true
		}
		if p.Default {
			if _, err := tx.q.Exec(ctx, `UPDATE products SET is_default = false WHERE is_default AND name <> $1`, p.Name); err != nil {
				return fmt.Errorf("clear default product: %w", err)
			}
		}
		tag, err = tx.q.Exec(ctx, `
			UPDATE products SET current_version = $2, warm_pool_size = coalesce($3, warm_pool_size),
				is_default = is_default OR $4, updated_at = now()
			WHERE name = $1 AND (current_version, warm_pool_size, is_default) IS DISTINCT FROM
				($2, coalesce($3, warm_pool_size), is_default OR $4)`,
			p.Name, current, p.WarmPoolSize, p.Default)
		if err != nil {
			return fmt.Errorf("update product: %w", err)
		}
		changed = changed || tag.RowsAffected() > 0
		return nil
	})
	if err != nil {
		return Product{}, false, mapError(err)
	}
	prod, err := s.GetProduct(ctx, p.Name)
	return prod, changed, err
}

const productColumns = `name, current_version, warm_pool_size, is_default, created_at, updated_at`

func scanProduct(row pgx.Row) (Product, error) {
	var p Product
	err := row.Scan(&p.Name, &p.CurrentVersion, &p.WarmPoolSize, &p.Default, &p.CreatedAt, &p.UpdatedAt)
	return p, err
}

// GetProduct returns one product.
func (s *Store) GetProduct(ctx context.Context, name string) (Product, error) {
	p, err := scanProduct(s.q.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE name = $1`, name))
	if isNoRows(err) {
		return Product{}, NotFound("product_not_found", "product %q does not exist", truncate(name, 40))
	}
	if err != nil {
		return Product{}, fmt.Errorf("get product: %w", err)
	}
	return p, nil
}

// DefaultProduct returns the default product, if one is set.
func (s *Store) DefaultProduct(ctx context.Context) (Product, bool, error) {
	p, err := scanProduct(s.q.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE is_default`))
	if isNoRows(err) {
		return Product{}, false, nil
	}
	if err != nil {
		return Product{}, false, fmt.Errorf("default product: %w", err)
	}
	return p, true, nil
}

// ListProducts returns all products by name.
func (s *Store) ListProducts(ctx context.Context) ([]Product, error) {
	rows, err := s.q.Query(ctx, `SELECT `+productColumns+` FROM products ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list products: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Product, error) { return scanProduct(row) })
}

// Migrations returns a product's migrations in version order, up to and
// including version upTo (all when upTo is 0).
func (s *Store) Migrations(ctx context.Context, product string, upTo int64) ([]Migration, error) {
	rows, err := s.q.Query(ctx, `
		SELECT version, name, sql, checksum FROM product_migrations
		WHERE product = $1 AND ($2 = 0 OR version <= $2) ORDER BY version`, product, upTo)
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Migration, error) {
		var m Migration
		err := row.Scan(&m.Version, &m.Name, &m.SQL, &m.Checksum)
		return m, err
	})
}
