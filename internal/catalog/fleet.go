package catalog

import (
	"context"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
)

// namePattern is the shape of region and shard names.
var namePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}[a-z0-9]$`)

// ValidateName checks a region or shard name.
func ValidateName(kind, name string) error {
	if !namePattern.MatchString(name) {
		return Invalid("invalid_name",
			"%s name %q must be 2 to 32 lower-case letters, digits and hyphens, starting with a letter", kind, truncate(name, 40))
	}
	return nil
}

// CreateRegion adds a region.
func (s *Store) CreateRegion(ctx context.Context, r Region) (Region, error) {
	if err := ValidateName("region", r.Name); err != nil {
		return Region{}, err
	}
	err := s.q.QueryRow(ctx,
		`INSERT INTO regions (name, edge_url) VALUES ($1, $2) RETURNING created_at`,
		r.Name, r.EdgeURL).Scan(&r.CreatedAt)
	if err != nil {
		return Region{}, mapError(fmt.Errorf("create region: %w", err))
	}
	return r, nil
}

// SetRegionEdgeURL records where a region's edge is reached (other
// regions' edges forward its tenants there).
func (s *Store) SetRegionEdgeURL(ctx context.Context, name, edgeURL string) error {
	tag, err := s.q.Exec(ctx, `UPDATE regions SET edge_url = $2 WHERE name = $1`, name, edgeURL)
	if err != nil {
		return fmt.Errorf("set region edge: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return NotFound("region_not_found", "region %q does not exist", truncate(name, 40))
	}
	return nil
}

// ListRegions returns all regions by name.
func (s *Store) ListRegions(ctx context.Context) ([]Region, error) {
	rows, err := s.q.Query(ctx, `SELECT name, edge_url, created_at FROM regions ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list regions: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Region, error) {
		var r Region
		err := row.Scan(&r.Name, &r.EdgeURL, &r.CreatedAt)
		return r, err
	})
}

const shardColumns = `s.name, s.region, s.dsn, s.capacity, s.draining, s.health, s.health_error,
	s.health_changed_at, s.created_at, s.backups,
	(SELECT count(*) FROM tenant_databases d WHERE d.shard = s.name AND d.state <> 'dropped')`

func scanShard(row pgx.Row) (Shard, error) {
	var sh Shard
	err := row.Scan(&sh.Name, &sh.Region, &sh.DSN, &sh.Capacity, &sh.Draining, &sh.Health, &sh.HealthError,
		&sh.HealthChangedAt, &sh.CreatedAt, &sh.Backups, &sh.Databases)
	return sh, err
}

// CreateShard registers a shard. The caller checks that its DSN reaches a
// Postgres server first.
func (s *Store) CreateShard(ctx context.Context, sh Shard) (Shard, error) {
	if err := ValidateName("shard", sh.Name); err != nil {
		return Shard{}, err
	}
	if sh.Capacity <= 0 {
		return Shard{}, Invalid("invalid_capacity", "capacity must be a positive number of databases")
	}
	switch sh.Backups {
	case "":
		sh.Backups = BackupsByPlinth
	case BackupsByPlinth, BackupsByProvider:
	default:
		return Shard{}, Invalid("invalid_backups", "backups must be %q or %q, not %q", BackupsByPlinth, BackupsByProvider, truncate(sh.Backups, 40))
	}
	if ok, err := s.regionExists(ctx, sh.Region); err != nil {
		return Shard{}, err
	} else if !ok {
		return Shard{}, NotFound("region_not_found", "region %q does not exist", sh.Region)
	}
	_, err := s.q.Exec(ctx,
		`INSERT INTO shards (name, region, dsn, capacity, backups) VALUES ($1, $2, $3, $4, $5)`,
		sh.Name, sh.Region, sh.DSN, sh.Capacity, sh.Backups)
	if err != nil {
		return Shard{}, mapError(fmt.Errorf("create shard: %w", err))
	}
	return s.GetShard(ctx, sh.Name)
}

func (s *Store) regionExists(ctx context.Context, name string) (bool, error) {
	var ok bool
	if err := s.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM regions WHERE name = $1)`, name).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up region: %w", err)
	}
	return ok, nil
}

// GetShard returns one shard.
func (s *Store) GetShard(ctx context.Context, name string) (Shard, error) {
	sh, err := scanShard(s.q.QueryRow(ctx, `SELECT `+shardColumns+` FROM shards s WHERE s.name = $1`, name))
	if isNoRows(err) {
		return Shard{}, NotFound("shard_not_found", "shard %q does not exist", name)
	}
	if err != nil {
		return Shard{}, fmt.Errorf("get shard: %w", err)
	}
	return sh, nil
}

// ListShards returns all shards, optionally only those of one region.
func (s *Store) ListShards(ctx context.Context, region string) ([]Shard, error) {
	rows, err := s.q.Query(ctx,
		`SELECT `+shardColumns+` FROM shards s WHERE $1 = '' OR s.region = $1 ORDER BY s.region, s.name`, region)
	if err != nil {
		return nil, fmt.Errorf("list shards: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Shard, error) { return scanShard(row) })
}

// SetShardBackups records who backs a shard up: BackupsByPlinth or
// BackupsByProvider.
func (s *Store) SetShardBackups(ctx context.Context, name, backups string) (Shard, error) {
	if backups != BackupsByPlinth && backups != BackupsByProvider {
		return Shard{}, Invalid("invalid_backups", "backups must be %q or %q, not %q", BackupsByPlinth, BackupsByProvider, truncate(backups, 40))
	}
	tag, err := s.q.Exec(ctx, `UPDATE shards SET backups = $2 WHERE name = $1`, name, backups)
	if err != nil {
		return Shard{}, fmt.Errorf("set shard backups: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return Shard{}, NotFound("shard_not_found", "shard %q does not exist", truncate(name, 63))
	}
	return s.GetShard(ctx, name)
}

// SetDraining drains a shard (no new placements) or undrains it.
func (s *Store) SetDraining(ctx context.Context, name string, draining bool) (Shard, error) {
	tag, err := s.q.Exec(ctx, `UPDATE shards SET draining = $2 WHERE name = $1`, name, draining)
	if err != nil {
		return Shard{}, fmt.Errorf("set draining: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return Shard{}, NotFound("shard_not_found", "shard %q does not exist", name)
	}
	return s.GetShard(ctx, name)
}

// RecordProbe records one health probe of a shard (probeErr nil when the
// shard answered). A shard turns unhealthy after failures consecutive failed
// probes and healthy again at the first good one. It reports whether the
// shard's health changed.
func (s *Store) RecordProbe(ctx context.Context, shard string, probeErr error, failures int) (changed bool, err error) {
	msg := ""
	if probeErr != nil {
		msg = Truncate(probeErr.Error(), 500)
	}
	var consecutive int
	err = s.q.QueryRow(ctx, `
		INSERT INTO shard_probes (shard, checked_at, consecutive_failures, last_error)
		VALUES ($1, now(), CASE WHEN $2 = '' THEN 0 ELSE 1 END, $2)
		ON CONFLICT (shard) DO UPDATE SET
			checked_at = now(),
			consecutive_failures = CASE WHEN $2 = '' THEN 0 ELSE shard_probes.consecutive_failures + 1 END,
			last_error = $2
		RETURNING consecutive_failures`, shard, msg).Scan(&consecutive)
	if err != nil {
		return false, fmt.Errorf("record probe: %w", err)
	}
	health, herr := ShardHealthy, ""
	if consecutive >= failures {
		health, herr = ShardUnhealthy, msg
	} else if consecutive > 0 {
		return false, nil // not yet unhealthy, and not (yet) healthy again
	}
	tag, err := s.q.Exec(ctx, `
		UPDATE shards SET health = $2, health_error = $3, health_changed_at = now()
		WHERE name = $1 AND health <> $2`, shard, health, herr)
	if err != nil {
		return false, fmt.Errorf("set shard health: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

// SetWarmPool sets the warm pool size of one product on one shard.
func (s *Store) SetWarmPool(ctx context.Context, shard, product string, size int) (WarmPool, error) {
	if size < 0 || size > 1000 {
		return WarmPool{}, Invalid("invalid_size", "warm pool size must be between 0 and 1000")
	}
	if _, err := s.GetShard(ctx, shard); err != nil {
		return WarmPool{}, err
	}
	if _, err := s.GetProduct(ctx, product); err != nil {
		return WarmPool{}, err
	}
	_, err := s.q.Exec(ctx, `
		INSERT INTO warm_pools (shard, product, size) VALUES ($1, $2, $3)
		ON CONFLICT (shard, product) DO UPDATE SET size = excluded.size`, shard, product, size)
	if err != nil {
		return WarmPool{}, fmt.Errorf("set warm pool: %w", err)
	}
	pools, err := s.ListWarmPools(ctx)
	if err != nil {
		return WarmPool{}, err
	}
	for _, p := range pools {
		if p.Shard == shard && p.Product == product {
			return p, nil
		}
	}
	return WarmPool{}, fmt.Errorf("warm pool %s/%s vanished", shard, product)
}

// ListWarmPools returns every (shard, product) pair with its target size and
// how many warm databases it holds.
func (s *Store) ListWarmPools(ctx context.Context) ([]WarmPool, error) {
	rows, err := s.q.Query(ctx, `
		SELECT s.name, p.name, coalesce(w.size, p.warm_pool_size), w.size IS NOT NULL,
			count(d.id) FILTER (WHERE d.state = 'warm' AND d.schema_version = p.current_version),
			count(d.id) FILTER (WHERE d.state = 'creating' AND d.installation_id IS NULL)
		FROM shards s CROSS JOIN products p
		LEFT JOIN warm_pools w ON w.shard = s.name AND w.product = p.name
		LEFT JOIN tenant_databases d ON d.shard = s.name AND d.product = p.name
			AND d.state IN ('warm', 'creating') AND d.installation_id IS NULL
		GROUP BY s.name, p.name, w.size, p.warm_pool_size
		ORDER BY s.name, p.name`)
	if err != nil {
		return nil, fmt.Errorf("list warm pools: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (WarmPool, error) {
		var w WarmPool
		err := row.Scan(&w.Shard, &w.Product, &w.Size, &w.Configured, &w.Ready, &w.Creating)
		return w, err
	})
}
