package provision

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Kinds of rebuild findings, besides FindingShard and FindingIdentity.
const (
	FindingUnreadable     = "unreadable"             // its identity cannot be read
	FindingUnknownProduct = "unknown_product"        // its product is not registered in the catalog
	FindingElsewhere      = "installation_elsewhere" // the catalog has its installation, tenant's product or name otherwise
	FindingDuplicate      = "duplicate_installation" // another database claims the same installation
	FindingHeldBack       = "tenant_held_back"       // another database of its tenant has a finding
	FindingRebuildFailed  = "rebuild_failed"         // the catalog refused to record it
)

// rebuiltTier is the tier of a recreated tenant: identities do not record
// tiers, so it gets the least critical one (the API's default).
const rebuiltTier = 3

// RebuildOptions says how to rebuild the catalog.
type RebuildOptions struct {
	DryRun    bool // report what would be recreated, write nothing
	Actor     string
	RequestID string
}

// RebuiltDatabase is a database RebuildCatalog recorded (or, in a dry run,
// would record), with its tenant and installation for an assigned one.
type RebuiltDatabase struct {
	Shard          string                `json:"shard"`
	Database       string                `json:"database"`
	DatabaseID     uuid.UUID             `json:"database_id"`
	Product        string                `json:"product"`
	SchemaVersion  int64                 `json:"schema_version"`
	State          catalog.DatabaseState `json:"state"` // assigned or warm
	TenantID       *uuid.UUID            `json:"tenant_id,omitempty"`
	Slug           string                `json:"slug,omitempty"`
	InstallationID *uuid.UUID            `json:"installation_id,omitempty"`
}

// RebuildReport is what RebuildCatalog did.
type RebuildReport struct {
	DryRun    bool              `json:"dry_run"`
	Shards    int               `json:"shards"`
	Databases int               `json:"databases"` // tenant databases found on the shards
	Unchanged int               `json:"unchanged"` // of them, those the catalog had already
	Tenants   int               `json:"tenants"`   // tenants recreated
	Recreated []RebuiltDatabase `json:"recreated"`
	Findings  []CatalogFinding  `json:"findings"`
	TookMS    int64             `json:"took_ms"`
}

// found is a tenant database found on a shard that the catalog does not have.
type found struct {
	shard catalog.Shard
	name  string
	id    tenantdb.Identity
	dbID  uuid.UUID // from its name
}

// RebuildCatalog recreates what the catalog lost from the identity rows of
// the tenant databases on the shards it has registered: for a database
// stamped for a tenant and installation the catalog lacks, the tenant
// (same ID, a slug derived from it, active), the installation (ready) and
// the database (assigned); for an unstamped one, a warm database. Each
// tenant is recreated whole, in one transaction with an audit record, or
// not at all: a database whose product is unknown, whose installation the
// catalog has elsewhere, or that shares its installation with another
// database is a finding, and its tenant is left alone. Databases the catalog
// has are left alone (catalog verify checks them). A second run recreates
// nothing.
func (s *Service) RebuildCatalog(ctx context.Context, st *catalog.Store, opts RebuildOptions) (RebuildReport, error) {
	began := time.Now()
	if opts.Actor == "" {
		return RebuildReport{}, catalog.Invalid("actor_required", "a rebuild is recorded in the audit log: name an actor")
	}
	shards, err := st.ListShards(ctx, "")
	if err != nil {
		return RebuildReport{}, err
	}
	products, err := st.ListProducts(ctx)
	if err != nil {
		return RebuildReport{}, err
	}
	known := map[string]bool{}
	for _, p := range products {
		known[p.Name] = true
	}
	rep := RebuildReport{DryRun: opts.DryRun, Shards: len(shards), Recreated: []RebuiltDatabase{}, Findings: []CatalogFinding{}}
	var mu sync.Mutex
	add := func(f CatalogFinding) {
		mu.Lock()
		defer mu.Unlock()
		rep.Findings = append(rep.Findings, f)
	}
	var all []found
	for _, sh := range shards {
		fs, err := s.unknownDatabases(ctx, st, sh, &rep, add)
		if err != nil {
			return RebuildReport{}, err
		}
		all = append(all, fs...)
	}

	// Check each database on its own, then against the others and the catalog.
	flagged := map[string]bool{} // databases with a finding
	bad := map[uuid.UUID]bool{}  // tenants with a flagged database
	flag := func(f found, kind, format string, args ...any) {
		add(CatalogFinding{Shard: f.shard.Name, Database: f.name, Kind: kind, Detail: fmt.Sprintf(format, args...)})
		flagged[f.name] = true
		if f.id.TenantID != nil {
			bad[*f.id.TenantID] = true
		}
	}
	var warm []found
	byInst := map[uuid.UUID][]found{}
	for _, f := range all {
		switch {
		case f.id.DatabaseID != nil && *f.id.DatabaseID != f.dbID:
			flag(f, FindingIdentity, "its identity names database %s, its name database %s", f.id.DatabaseID, f.dbID)
		case !known[f.id.Product]:
			flag(f, FindingUnknownProduct, "a %s database: register product %s first", f.id.Product, f.id.Product)
		case f.id.TenantID == nil:
			warm = append(warm, f)
		default:
			byInst[*f.id.InstallationID] = append(byInst[*f.id.InstallationID], f)
		}
	}
	instIDs := make([]uuid.UUID, 0, len(byInst))
	for id, fs := range byInst {
		instIDs = append(instIDs, id)
		if len(fs) > 1 {
			for _, f := range fs {
				flag(f, FindingDuplicate, "%d databases claim installation %s of tenant %s", len(fs), id, f.id.TenantID)
			}
		}
	}
	refs, err := st.InstallationRefs(ctx, instIDs)
	if err != nil {
		return RebuildReport{}, err
	}
	byTenant := map[uuid.UUID][]found{}
	for id, fs := range byInst {
		f := fs[0]
		if ref, ok := refs[id]; ok {
			where := "no live database"
			if ref.Database != "" {
				where = fmt.Sprintf("database %s on shard %s", ref.Database, ref.Shard)
			}
			flag(f, FindingElsewhere, "the catalog has installation %s (tenant %s's %s, %s) with %s",
				id, ref.TenantID, ref.Product, ref.State, where)
		}
		byTenant[*f.id.TenantID] = append(byTenant[*f.id.TenantID], f)
	}
	tenantIDs := make([]uuid.UUID, 0, len(byTenant))
	for id := range byTenant {
		tenantIDs = append(tenantIDs, id)
	}
	slices.SortFunc(tenantIDs, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })

	for _, tid := range tenantIDs {
		fs := byTenant[tid]
		slices.SortFunc(fs, func(a, b found) int { return strings.Compare(a.id.Product, b.id.Product) })
		p := catalog.RecoverTenantParams{ID: tid, Slug: catalog.RecoveredSlug(tid), Tier: rebuiltTier,
			CreatedAt: idTime(tid, time.Time{}), Actor: opts.Actor, RequestID: opts.RequestID}
		exists := false
		if !bad[tid] {
			t, err := st.GetTenantByID(ctx, tid)
			switch {
			case err == nil:
				exists, p.Slug = true, t.Slug
				for _, f := range fs {
					for _, in := range t.Installations {
						if in.Product == f.id.Product && in.ID != *f.id.InstallationID {
							flag(f, FindingElsewhere, "tenant %s has its %s installation already: %s", t.Slug, in.Product, in.ID)
						}
					}
				}
				if t.State == catalog.StatePurged {
					flag(fs[0], FindingElsewhere, "tenant %s is purged in the catalog", t.Slug)
				}
			case catalog.IsCode(err, "tenant_not_found"):
				p.Region = fs[0].shard.Region
				for _, f := range fs[1:] {
					if f.shard.Region != p.Region {
						flag(f, FindingElsewhere, "tenant %s has databases in regions %s and %s", tid, p.Region, f.shard.Region)
					}
				}
			default:
				return RebuildReport{}, err
			}
		}
		if bad[tid] {
			for _, f := range fs {
				if !flagged[f.name] {
					flag(f, FindingHeldBack, "not recreated: another database of tenant %s has a finding", tid)
				}
			}
			continue
		}
		for _, f := range fs {
			p.Databases = append(p.Databases, recovered(f))
		}
		done := p.Databases
		if !opts.DryRun {
			res, err := st.RecoverTenant(ctx, p)
			if _, ok := catalog.AsError(err); ok {
				for _, f := range fs {
					flag(f, FindingRebuildFailed, "%v", err)
				}
				continue
			}
			if err != nil {
				return RebuildReport{}, err
			}
			exists = !res.TenantCreated
			done = res.Databases
			s.cfg.Logger.Info("tenant recreated from its databases", "tenant_id", tid, "slug", p.Slug,
				"databases", len(done), "tenant_created", res.TenantCreated, "actor", opts.Actor, "request_id", opts.RequestID)
		}
		if !exists {
			rep.Tenants++
		}
		for _, d := range done {
			tenant, inst := tid, d.InstallationID
			rep.Recreated = append(rep.Recreated, RebuiltDatabase{Shard: d.Shard, Database: d.Name, DatabaseID: d.ID,
				Product: d.Product, SchemaVersion: d.SchemaVersion, State: catalog.DatabaseAssigned,
				TenantID: &tenant, Slug: p.Slug, InstallationID: &inst})
		}
	}

	for _, f := range warm {
		d := recovered(f)
		if !opts.DryRun {
			added, err := st.RecoverWarmDatabase(ctx, d, opts.Actor, opts.RequestID)
			if _, ok := catalog.AsError(err); ok {
				flag(f, FindingRebuildFailed, "%v", err)
				continue
			}
			if err != nil {
				return RebuildReport{}, err
			}
			if !added {
				continue
			}
		}
		rep.Recreated = append(rep.Recreated, RebuiltDatabase{Shard: d.Shard, Database: d.Name, DatabaseID: d.ID,
			Product: d.Product, SchemaVersion: d.SchemaVersion, State: catalog.DatabaseWarm})
	}
	slices.SortFunc(rep.Findings, func(a, b CatalogFinding) int {
		return strings.Compare(a.Shard+"/"+a.Database+"/"+a.Kind, b.Shard+"/"+b.Database+"/"+b.Kind)
	})
	rep.TookMS = time.Since(began).Milliseconds()
	s.cfg.Logger.Info("catalog rebuilt from the shards", "dry_run", opts.DryRun, "shards", rep.Shards,
		"databases", rep.Databases, "tenants", rep.Tenants, "recreated", len(rep.Recreated), "findings", len(rep.Findings),
		"actor", opts.Actor, "request_id", opts.RequestID)
	return rep, nil
}

// unknownDatabases lists the tenant databases on a shard, counts those the
// catalog has, and reads the identity of the others.
func (s *Service) unknownDatabases(ctx context.Context, st *catalog.Store, sh catalog.Shard, rep *RebuildReport,
	add func(CatalogFinding)) ([]found, error) {
	shard, err := s.cfg.Pools.Shard(sh)
	var live map[string]bool
	if err == nil {
		live, err = connectableDatabases(ctx, shard)
	}
	if err != nil {
		add(CatalogFinding{Shard: sh.Name, Kind: FindingShard, Detail: err.Error()})
		return nil, nil
	}
	names := make([]string, 0, len(live))
	for name := range live {
		names = append(names, name)
	}
	slices.Sort(names)
	rep.Databases += len(names)
	recorded, err := st.DatabasesNamed(ctx, names)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var out []found
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, name := range names {
		if d, ok := recorded[name]; ok {
			if d.Shard == sh.Name && d.State != catalog.DatabaseDropped {
				rep.Unchanged++
			} else {
				add(CatalogFinding{Shard: sh.Name, Database: name, Kind: FindingElsewhere,
					Detail: fmt.Sprintf("the catalog has this database as %s on shard %s", d.State, d.Shard)})
			}
			continue
		}
		if !live[name] {
			add(CatalogFinding{Shard: sh.Name, Database: name, Kind: FindingUnreadable,
				Detail: "it refuses connections (as a database a restore replaced does), so its identity cannot be read"})
			continue
		}
		dbID, err := uuid.Parse(strings.TrimPrefix(name, "t_"))
		if err != nil {
			add(CatalogFinding{Shard: sh.Name, Database: name, Kind: FindingUnreadable, Detail: "its name is not a database ID"})
			continue
		}
		g.Go(func() error {
			id, err := shard.ReadIdentity(gctx, name)
			if err != nil {
				add(CatalogFinding{Shard: sh.Name, Database: name, Kind: FindingUnreadable, Detail: err.Error()})
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			out = append(out, found{shard: sh, name: name, id: id, dbID: dbID})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b found) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// connectableDatabases returns the tenant databases on a shard and whether
// each takes connections.
func connectableDatabases(ctx context.Context, shard *tenantdb.Shard) (map[string]bool, error) {
	rows, err := shard.Admin.Query(ctx, `SELECT datname, datallowconn FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'`)
	if err != nil {
		return nil, fmt.Errorf("list databases on shard %s: %w", shard.Name, err)
	}
	out := map[string]bool{}
	var name string
	var allow bool
	_, err = pgx.ForEachRow(rows, []any{&name, &allow}, func() error {
		out[name] = allow
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list databases on shard %s: %w", shard.Name, err)
	}
	return out, nil
}

// recovered is the catalog record a found database's identity makes.
func recovered(f found) catalog.RecoveredDatabase {
	d := catalog.RecoveredDatabase{ID: f.dbID, Name: f.name, Shard: f.shard.Name, Product: f.id.Product,
		SchemaVersion: f.id.SchemaVersion, CreatedAt: idTime(f.dbID, f.id.CreatedAt), AssignedAt: f.id.AssignedAt}
	if f.id.InstallationID != nil {
		d.InstallationID = *f.id.InstallationID
		var assigned time.Time
		if f.id.AssignedAt != nil {
			assigned = *f.id.AssignedAt
		}
		d.InstallationCreatedAt = idTime(d.InstallationID, assigned)
	}
	return d
}

// idTime is when a version 7 UUID (as Plinth makes) was made, to the
// millisecond, or fallback for another version.
func idTime(id uuid.UUID, fallback time.Time) time.Time {
	if id.Version() != 7 {
		return fallback
	}
	sec, nsec := id.Time().UnixTime()
	return time.Unix(sec, nsec)
}
