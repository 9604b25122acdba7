package catalog

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// DatabaseName is the name of the tenant database with the given ID on its
// shard: derived from the ID (never from a slug), 34 bytes.
func DatabaseName(id uuid.UUID) string {
	return "t_" + strings.ReplaceAll(id.String(), "-", "")
}

const databaseColumns = `id, name, shard, product, state, schema_version, installation_id, created_at, updated_at`

func scanDatabase(row pgx.Row) (Database, error) {
	var d Database
	err := row.Scan(&d.ID, &d.Name, &d.Shard, &d.Product, &d.State, &d.SchemaVersion, &d.InstallationID,
		&d.CreatedAt, &d.UpdatedAt)
	return d, err
}

func collectDatabases(rows pgx.Rows, err error) ([]Database, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Database, error) { return scanDatabase(row) })
}

// GetDatabase returns one tenant database record.
func (s *Store) GetDatabase(ctx context.Context, id uuid.UUID) (Database, error) {
	d, err := scanDatabase(s.q.QueryRow(ctx, `SELECT `+databaseColumns+` FROM tenant_databases WHERE id = $1`, id))
	if isNoRows(err) {
		return Database{}, NotFound("database_not_found", "database %s does not exist", id)
	}
	if err != nil {
		return Database{}, fmt.Errorf("get database: %w", err)
	}
	return d, nil
}

// eligibleShards is the placement rule: shards of region $1 that are
// healthy and not draining, with their free capacity.
const eligibleShards = `
	SELECT s.name, s.capacity - count(d.id) AS free
	FROM shards s
	LEFT JOIN tenant_databases d ON d.shard = s.name AND d.state <> 'dropped'
	WHERE s.region = $1 AND NOT s.draining AND s.health = 'healthy'
	GROUP BY s.name, s.capacity`

// ReserveDatabase gives an installation its database. It claims a warm
// database of the product's current version (state assigned, ready to
// stamp), or records the intent to create one (state creating) on the
// eligible shard with the most free capacity. It reports whether it claimed
// a warm database. Called again for the same installation it returns the
// database reserved before.
func (s *Store) ReserveDatabase(ctx context.Context, installationID uuid.UUID) (d Database, claimedWarm bool, err error) {
	err = s.InTx(ctx, func(tx *Store) error {
		existing, err := scanDatabase(tx.q.QueryRow(ctx, `SELECT `+databaseColumns+` FROM tenant_databases
			WHERE installation_id = $1 AND state IN ('creating', 'assigned')`, installationID))
		if err == nil {
			d = existing
			return nil
		}
		if !isNoRows(err) {
			return fmt.Errorf("find reserved database: %w", err)
		}
		var product, region string
		var version int64
		err = tx.q.QueryRow(ctx, `
			SELECT i.product, t.region, p.current_version
			FROM installations i JOIN tenants t ON t.id = i.tenant_id JOIN products p ON p.name = i.product
			WHERE i.id = $1`, installationID).Scan(&product, &region, &version)
		if err != nil {
			return fmt.Errorf("load installation %s: %w", installationID, err)
		}
		// A warm database on an eligible shard, preferring the emptiest shard.
		var warmID uuid.UUID
		err = tx.q.QueryRow(ctx, `
			WITH eligible AS (`+eligibleShards+`)
			SELECT d.id FROM tenant_databases d JOIN eligible e ON e.name = d.shard
			WHERE d.product = $2 AND d.state = 'warm' AND d.schema_version = $3
			ORDER BY e.free DESC, d.created_at
			LIMIT 1 FOR UPDATE OF d SKIP LOCKED`, region, product, version).Scan(&warmID)
		switch {
		case err == nil:
			d, err = scanDatabase(tx.q.QueryRow(ctx, `
				UPDATE tenant_databases SET state = 'assigned', installation_id = $2, updated_at = now()
				WHERE id = $1 RETURNING `+databaseColumns, warmID, installationID))
			if err != nil {
				return fmt.Errorf("claim warm database: %w", err)
			}
			claimedWarm = true
			return nil
		case !isNoRows(err):
			return fmt.Errorf("find warm database: %w", err)
		}
		shard, err := tx.lockShardWithCapacity(ctx, region)
		if err != nil {
			return err
		}
		d, err = tx.insertIntent(ctx, shard, product, version, &installationID)
		return err
	})
	return d, claimedWarm, err
}

// lockShardWithCapacity locks the rows of every eligible shard of region,
// in name order (so two placements never deadlock), then picks the one with
// the most free capacity by counting again under the locks: concurrent
// placements are counted one after another and never overfill a shard, and
// a shard drained or marked unhealthy meanwhile is not picked.
func (s *Store) lockShardWithCapacity(ctx context.Context, region string) (string, error) {
	rows, err := s.q.Query(ctx, `SELECT name FROM shards
		WHERE region = $1 AND NOT draining AND health = 'healthy'
		ORDER BY name FOR NO KEY UPDATE`, region)
	if err != nil {
		return "", fmt.Errorf("lock shards: %w", err)
	}
	locked, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("lock shards: %w", err)
	}
	var best string
	if len(locked) > 0 {
		err = s.q.QueryRow(ctx, `SELECT name FROM (`+eligibleShards+`) e
			WHERE free > 0 AND name = ANY($2) ORDER BY free DESC, name LIMIT 1`, region, locked).Scan(&best)
		if err != nil && !isNoRows(err) {
			return "", fmt.Errorf("place database: %w", err)
		}
	}
	if best == "" {
		return "", Unavailable("no_capacity", "no shard in region %s can take a database: %s", region, s.whyNoCapacity(ctx, region))
	}
	return best, nil
}

// whyNoCapacity says, shard by shard, why none of a region's shards can take
// a database, for the failure reason an operator reads.
func (s *Store) whyNoCapacity(ctx context.Context, region string) string {
	shards, err := s.ListShards(ctx, region)
	if err != nil || len(shards) == 0 {
		return "the region has no shards"
	}
	var why []string
	for _, sh := range shards {
		switch {
		case sh.Health == ShardUnhealthy:
			why = append(why, fmt.Sprintf("%s is unhealthy (%s)", sh.Name, sh.HealthError))
		case sh.Draining:
			why = append(why, sh.Name+" is draining")
		default:
			why = append(why, fmt.Sprintf("%s is full (%d/%d)", sh.Name, sh.Databases, sh.Capacity))
		}
	}
	return strings.Join(why, "; ")
}

// lockFree locks a shard's row and returns its free capacity. The count is
// a second statement on purpose: in READ COMMITTED a statement that waited
// for the row lock still reads with its old snapshot, so counting in the
// locking statement would miss the databases the previous holder added.
func (s *Store) lockFree(ctx context.Context, shard string) (int, error) {
	var capacity, used int
	if err := s.q.QueryRow(ctx, `SELECT capacity FROM shards WHERE name = $1 FOR NO KEY UPDATE`, shard).Scan(&capacity); err != nil {
		return 0, fmt.Errorf("lock shard %s: %w", shard, err)
	}
	if err := s.q.QueryRow(ctx, `SELECT count(*) FROM tenant_databases WHERE shard = $1 AND state <> 'dropped'`, shard).Scan(&used); err != nil {
		return 0, fmt.Errorf("count databases on shard %s: %w", shard, err)
	}
	return capacity - used, nil
}

func (s *Store) insertIntent(ctx context.Context, shard, product string, version int64, installationID *uuid.UUID) (Database, error) {
	id := uuid.Must(uuid.NewV7())
	d, err := s.insertDatabase(ctx, Database{ID: id, Name: DatabaseName(id), Shard: shard, Product: product,
		State: DatabaseCreating, SchemaVersion: version, InstallationID: installationID})
	if err != nil {
		return Database{}, fmt.Errorf("record database intent: %w", err)
	}
	return d, nil
}

// insertDatabase inserts a tenant database record as d describes it; a
// zero d.CreatedAt means now.
func (s *Store) insertDatabase(ctx context.Context, d Database) (Database, error) {
	out, err := scanDatabase(s.q.QueryRow(ctx, `
		INSERT INTO tenant_databases (id, name, shard, product, state, schema_version, installation_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now())) RETURNING `+databaseColumns,
		d.ID, d.Name, d.Shard, d.Product, d.State, d.SchemaVersion, d.InstallationID, orNow(d.CreatedAt)))
	if err != nil {
		return Database{}, mapError(fmt.Errorf("insert database %s: %w", d.Name, err))
	}
	return out, nil
}

// SetDatabaseState moves a database record from one state to another and
// reports whether it was in from.
func (s *Store) SetDatabaseState(ctx context.Context, id uuid.UUID, from, to DatabaseState) (bool, error) {
	tag, err := s.q.Exec(ctx,
		`UPDATE tenant_databases SET state = $3, updated_at = now() WHERE id = $1 AND state = $2`, id, from, to)
	if err != nil {
		return false, fmt.Errorf("set database state: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

// AbandonDatabase gives up a database an installation reserved but never
// got (its shard failed): the record moves to dropping, so the sweeper drops
// whatever exists once the shard answers, and the installation can be placed
// anew.
func (s *Store) AbandonDatabase(ctx context.Context, id uuid.UUID) error {
	_, err := s.q.Exec(ctx,
		`UPDATE tenant_databases SET state = 'dropping', installation_id = NULL, updated_at = now()
		 WHERE id = $1 AND state = 'creating'`, id)
	if err != nil {
		return fmt.Errorf("abandon database: %w", err)
	}
	return nil
}

// SetInstallationState sets an installation's state.
func (s *Store) SetInstallationState(ctx context.Context, id uuid.UUID, state InstallationState) error {
	_, err := s.q.Exec(ctx, `UPDATE installations SET state = $2, updated_at = now() WHERE id = $1 AND state <> $2`, id, state)
	if err != nil {
		return fmt.Errorf("set installation state: %w", err)
	}
	return nil
}

// LiveDatabases returns the databases a tenant's installations own or are
// being given (creating or assigned).
func (s *Store) LiveDatabases(ctx context.Context, tenantID uuid.UUID) ([]Database, error) {
	return collectDatabases(s.q.Query(ctx, `
		SELECT `+prefixed("d.", databaseColumns)+` FROM tenant_databases d
		JOIN installations i ON i.id = d.installation_id
		WHERE i.tenant_id = $1 AND d.state IN ('creating', 'assigned')
		ORDER BY d.id`, tenantID))
}

// WarmDeficit is how many warm databases one (shard, product) pool lacks.
type WarmDeficit struct {
	Shard   string
	Product string
	Version int64
	Missing int
}

// WarmDeficits returns the pools below their target size on healthy,
// undrained shards. Databases being created for a pool count as present.
func (s *Store) WarmDeficits(ctx context.Context) ([]WarmDeficit, error) {
	rows, err := s.q.Query(ctx, `
		SELECT s.name, p.name, p.current_version, coalesce(w.size, p.warm_pool_size) - count(d.id)
		FROM shards s CROSS JOIN products p
		LEFT JOIN warm_pools w ON w.shard = s.name AND w.product = p.name
		LEFT JOIN tenant_databases d ON d.shard = s.name AND d.product = p.name AND d.installation_id IS NULL
			AND ((d.state = 'warm' AND d.schema_version = p.current_version) OR d.state = 'creating')
		WHERE NOT s.draining AND s.health = 'healthy' AND p.current_version > 0
		GROUP BY s.name, p.name, p.current_version, w.size, p.warm_pool_size
		HAVING coalesce(w.size, p.warm_pool_size) - count(d.id) > 0
		ORDER BY s.name, p.name`)
	if err != nil {
		return nil, fmt.Errorf("warm deficits: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (WarmDeficit, error) {
		var w WarmDeficit
		err := row.Scan(&w.Shard, &w.Product, &w.Version, &w.Missing)
		return w, err
	})
}

// ReserveWarm records the intent to create up to n warm databases of a
// product on a shard, within what the pool lacks and the shard's free
// capacity, both counted under the shard's lock (so concurrent refills
// never overfill a pool).
func (s *Store) ReserveWarm(ctx context.Context, shard, product string, version int64, n int) ([]Database, error) {
	var out []Database
	err := s.InTx(ctx, func(tx *Store) error {
		free, err := tx.lockFree(ctx, shard)
		if err != nil {
			return err
		}
		var missing int
		err = tx.q.QueryRow(ctx, `
			SELECT coalesce(w.size, p.warm_pool_size) - (
				SELECT count(*) FROM tenant_databases d
				WHERE d.shard = $1 AND d.product = $2 AND d.installation_id IS NULL
				  AND ((d.state = 'warm' AND d.schema_version = $3) OR d.state = 'creating'))
			FROM products p LEFT JOIN warm_pools w ON w.shard = $1 AND w.product = p.name
			WHERE p.name = $2`, shard, product, version).Scan(&missing)
		if err != nil {
			return fmt.Errorf("count warm pool: %w", err)
		}
		for range max(min(n, free, missing), 0) {
			d, err := tx.insertIntent(ctx, shard, product, version, nil)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// RetireWarm marks for dropping the warm databases that can no longer be
// claimed: those at an older schema version than their product's, and those
// beyond their pool's target size (oldest kept first).
func (s *Store) RetireWarm(ctx context.Context) (int, error) {
	tag, err := s.q.Exec(ctx, `
		UPDATE tenant_databases SET state = 'dropping', updated_at = now()
		WHERE state = 'warm' AND id IN (
			SELECT d.id FROM (
				SELECT d.id, d.shard, d.product, d.schema_version,
					row_number() OVER (PARTITION BY d.shard, d.product, d.schema_version ORDER BY d.created_at) AS n
				FROM tenant_databases d WHERE d.state = 'warm'
			) d
			JOIN products p ON p.name = d.product
			LEFT JOIN warm_pools w ON w.shard = d.shard AND w.product = d.product
			WHERE d.schema_version <> p.current_version OR d.n > coalesce(w.size, p.warm_pool_size))`)
	if err != nil {
		return 0, fmt.Errorf("retire warm databases: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// ToDrop returns databases waiting to be dropped. Intents for warm
// databases that stayed in creating longer than abandonAfter (their worker
// died), and copies a finished restore did not swap in, are marked for
// dropping first.
func (s *Store) ToDrop(ctx context.Context, abandonAfter time.Duration, limit int) ([]Database, error) {
	_, err := s.q.Exec(ctx, `
		UPDATE tenant_databases SET state = 'dropping', updated_at = now()
		WHERE state = 'creating' AND installation_id IS NULL
		  AND updated_at < now() - $1::bigint * interval '1 microsecond'
		  -- A restore's copy waits for its swap for as long as the restore runs.
		  AND NOT EXISTS (SELECT 1 FROM restore_items r
			WHERE r.restored_database_id = tenant_databases.id AND r.state IN ('pending', 'copied'))`, abandonAfter.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("abandon stale intents: %w", err)
	}
	return collectDatabases(s.q.Query(ctx, `SELECT `+databaseColumns+` FROM tenant_databases
		WHERE state = 'dropping' ORDER BY updated_at LIMIT $1`, limit))
}

func prefixed(prefix, columns string) string {
	parts := strings.Split(columns, ",")
	for i, p := range parts {
		parts[i] = prefix + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// ShardDatabase is a database the catalog places on a shard, with the
// tenant its installation belongs to (nil for a warm one).
type ShardDatabase struct {
	Database
	TenantID *uuid.UUID
}

// ShardDatabases returns every database the catalog has on the shard that
// is not dropped.
func (s *Store) ShardDatabases(ctx context.Context, shard string) ([]ShardDatabase, error) {
	rows, err := s.q.Query(ctx, `SELECT `+prefixed("d.", databaseColumns)+`, i.tenant_id FROM tenant_databases d
		LEFT JOIN installations i ON i.id = d.installation_id
		WHERE d.shard = $1 AND d.state <> 'dropped' ORDER BY d.name`, shard)
	if err != nil {
		return nil, fmt.Errorf("shard databases: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ShardDatabase, error) {
		var d ShardDatabase
		err := row.Scan(&d.ID, &d.Name, &d.Shard, &d.Product, &d.State, &d.SchemaVersion, &d.InstallationID,
			&d.CreatedAt, &d.UpdatedAt, &d.TenantID)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("shard databases: %w", err)
	}
	return out, nil
}
