package provision

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Kinds of catalog findings.
const (
	FindingMissing  = "missing"           // in the catalog, not on its shard
	FindingOrphan   = "orphan"            // on a shard, not (or no longer) in the catalog
	FindingIdentity = "identity_mismatch" // its identity row names another database or tenant
	FindingShard    = "shard_unreachable"
)

// CatalogFinding is one disagreement between the catalog and a shard.
type CatalogFinding struct {
	Shard    string `json:"shard"`
	Database string `json:"database,omitempty"`
	Kind     string `json:"kind"`
	Detail   string `json:"detail"`
}

// CatalogReport is what VerifyCatalog found.
type CatalogReport struct {
	Shards    int              `json:"shards"`
	Databases int              `json:"databases"` // tenant databases checked
	Findings  []CatalogFinding `json:"findings"`
	TookMS    int64            `json:"took_ms"`
}

// VerifyCatalog compares the catalog with the shards: every warm,
// assigned or replaced database exists on its shard, every tenant
// database on a shard is in the catalog, and each database's identity row
// names the database, tenant and installation the catalog says (a database
// not stamped yet, as a warm one, names none). It reads and changes nothing else.
func (s *Service) VerifyCatalog(ctx context.Context, st *catalog.Store) (CatalogReport, error) {
	began := time.Now()
	shards, err := st.ListShards(ctx, "")
	if err != nil {
		return CatalogReport{}, err
	}
	rep := CatalogReport{Shards: len(shards), Findings: []CatalogFinding{}}
	var mu sync.Mutex
	add := func(f CatalogFinding) {
		mu.Lock()
		defer mu.Unlock()
		rep.Findings = append(rep.Findings, f)
	}
	for _, sh := range shards {
		cat, err := st.ShardDatabases(ctx, sh.Name)
		if err != nil {
			return CatalogReport{}, err
		}
		shard, err := s.cfg.Pools.Shard(sh)
		var live map[string]bool
		if err == nil {
			live, err = liveDatabases(ctx, shard)
		}
		if err != nil {
			add(CatalogFinding{Shard: sh.Name, Kind: FindingShard, Detail: err.Error()})
			continue
		}
		known := map[string]bool{}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for _, d := range cat {
			known[d.Name] = true
			switch d.State {
			case catalog.DatabaseWarm, catalog.DatabaseAssigned, catalog.DatabaseReplaced:
			default:
				continue // creating or dropping: a workflow is on it
			}
			if !live[d.Name] {
				add(CatalogFinding{Shard: sh.Name, Database: d.Name, Kind: FindingMissing,
					Detail: fmt.Sprintf("the catalog has this %s %s database, the shard does not", d.State, d.Product)})
				continue
			}
			if d.State == catalog.DatabaseReplaced {
				continue // it refuses connections
			}
			rep.Databases++
			g.Go(func() error {
				if f := checkDatabase(gctx, shard, d); f != nil {
					add(*f)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return CatalogReport{}, err
		}
		for name := range live {
			if !known[name] {
				add(CatalogFinding{Shard: sh.Name, Database: name, Kind: FindingOrphan,
					Detail: "on the shard, but the catalog has no live database of this name"})
			}
		}
	}
	rep.TookMS = time.Since(began).Milliseconds()
	return rep, nil
}

func liveDatabases(ctx context.Context, shard *tenantdb.Shard) (map[string]bool, error) {
	rows, err := shard.Admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'`)
	if err != nil {
		return nil, fmt.Errorf("list databases on shard %s: %w", shard.Name, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list databases on shard %s: %w", shard.Name, err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// checkDatabase compares a database's identity row with the catalog.
func checkDatabase(ctx context.Context, shard *tenantdb.Shard, d catalog.ShardDatabase) *CatalogFinding {
	f := func(format string, args ...any) *CatalogFinding {
		return &CatalogFinding{Shard: shard.Name, Database: d.Name, Kind: FindingIdentity, Detail: fmt.Sprintf(format, args...)}
	}
	id, err := shard.ReadIdentity(ctx, d.Name)
	switch {
	case err != nil:
		return f("cannot read its identity: %v", err)
	case id.DatabaseID == nil:
		return nil // not stamped yet: a warm database is stamped when a tenant claims it
	case *id.DatabaseID != d.ID:
		return f("its identity names database %v, the catalog %s", id.DatabaseID, d.ID)
	case id.Product != d.Product:
		return f("its identity names product %s, the catalog %s", id.Product, d.Product)
	case d.State == catalog.DatabaseWarm && id.TenantID != nil:
		return f("warm in the catalog, but stamped for tenant %s", id.TenantID)
	case d.State == catalog.DatabaseAssigned && id.TenantID != nil && (d.TenantID == nil || *id.TenantID != *d.TenantID):
		return f("its identity names tenant %s, the catalog %v", id.TenantID, d.TenantID)
	case d.State == catalog.DatabaseAssigned && id.InstallationID != nil && (d.InstallationID == nil || *id.InstallationID != *d.InstallationID):
		return f("its identity names installation %s, the catalog %v", id.InstallationID, d.InstallationID)
	}
	return nil
}
