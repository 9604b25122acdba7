// Package tenantctx is the tenant context: the read model every request
// needs before a product can serve it (which tenant, whether it is active,
// its tier and home region, and per product the shard and database that
// hold its data). The control plane serves it by slug, by ID and by custom
// domain, as a paged snapshot, and as a change feed in commit order; the
// Cache keeps it in process for the edge and the SDK, answering in well
// under a microsecond, and keeps serving what it knows when the control
// plane is down.
package tenantctx

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// Placement is where a tenant's database of one product lives.
type Placement struct {
	Product       string `json:"product"`
	Shard         string `json:"shard"`
	Address       string `json:"address"` // the shard's host:port
	Database      string `json:"database"`
	SchemaVersion int64  `json:"schema_version"`
}

// Context is what a request needs to know about its tenant.
type Context struct {
	TenantID   uuid.UUID           `json:"tenant_id"`
	Slug       string              `json:"slug"`
	State      catalog.TenantState `json:"state"`
	Tier       int                 `json:"tier"`
	Region     string              `json:"region"`
	Placements []Placement         `json:"placements"`
	// Domains are the custom domains the tenant proved it controls.
	Domains []string `json:"domains,omitempty"`
	// Version is the change-log version this context is current at.
	Version int64 `json:"version"`

	id string // TenantID as text, set when cached (it is needed per request)
}

// ID returns the tenant ID as text.
func (c *Context) ID() string {
	if c.id != "" {
		return c.id
	}
	return c.TenantID.String()
}

// Placement returns the tenant's database of product.
func (c *Context) Placement(product string) (Placement, bool) {
	for _, p := range c.Placements {
		if p.Product == product {
			return p, true
		}
	}
	return Placement{}, false
}

// Event is one entry of the change feed.
type Event struct {
	// Type is tenant (Context, or nil when the tenant is gone), shard (a
	// shard's address), routes, regions, sync (nothing changed up to
	// Version), or reset (the reader missed changes: reload).
	Type     string     `json:"type"`
	Version  int64      `json:"version"`
	TenantID *uuid.UUID `json:"tenant_id,omitempty"`
	Context  *Context   `json:"context,omitempty"`
	Shard    string     `json:"shard,omitempty"`
	Address  string     `json:"address,omitempty"`
}

// Source reads tenant contexts from the catalog (the control plane's side).
type Source struct {
	store *catalog.Store

	mu    sync.Mutex
	addrs map[string]string // shard -> host:port
	at    time.Time
}

// NewSource returns a Source on the catalog.
func NewSource(store *catalog.Store) *Source {
	return &Source{store: store}
}

// shardAddresses maps shards to their host:port (never the DSN: it holds
// a password), refreshed at most every few seconds.
func (s *Source) shardAddresses(ctx context.Context, st *catalog.Store, fresh bool) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !fresh && s.addrs != nil && time.Since(s.at) < 5*time.Second {
		return s.addrs, nil
	}
	shards, err := st.ListShards(ctx, "")
	if err != nil {
		return nil, err
	}
	addrs := make(map[string]string, len(shards))
	for _, sh := range shards {
		addrs[sh.Name] = Address(sh.DSN)
	}
	s.addrs, s.at = addrs, time.Now()
	return addrs, nil
}

// Address is the host:port of a shard DSN, or "" when it does not parse.
func Address(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
}

func (s *Source) build(ts []catalog.Tenant, domains map[uuid.UUID][]catalog.Domain, addrs map[string]string, version int64) []Context {
	out := make([]Context, 0, len(ts))
	for _, t := range ts {
		c := Context{TenantID: t.ID, Slug: t.Slug, State: t.State, Tier: t.Tier, Region: t.Region, Version: version,
			Placements: []Placement{}}
		for _, in := range t.Installations {
			if in.Database == "" {
				continue
			}
			c.Placements = append(c.Placements, Placement{Product: in.Product, Shard: in.Shard, Address: addrs[in.Shard],
				Database: in.Database, SchemaVersion: in.SchemaVersion})
		}
		for _, d := range domains[t.ID] {
			if d.VerifiedAt != nil {
				c.Domains = append(c.Domains, d.Domain)
			}
		}
		out = append(out, c)
	}
	return out
}

// lookup reads tenants (by ID) and their context at one snapshot.
func (s *Source) lookup(ctx context.Context, find func(st *catalog.Store) ([]catalog.Tenant, error)) ([]Context, int64, error) {
	var out []Context
	var version int64
	err := s.store.ReadSnapshot(ctx, func(st *catalog.Store) error {
		var err error
		if version, err = st.LatestVersion(ctx); err != nil {
			return err
		}
		ts, err := find(st)
		if err != nil || len(ts) == 0 {
			return err
		}
		ids := make([]uuid.UUID, len(ts))
		for i, t := range ts {
			ids[i] = t.ID
		}
		domains, err := st.Domains(ctx, ids)
		if err != nil {
			return err
		}
		addrs, err := s.shardAddresses(ctx, st, false)
		if err != nil {
			return err
		}
		out = s.build(ts, domains, addrs, version)
		return nil
	})
	return out, version, err
}

func one(cs []Context, err error, what string) (Context, error) {
	if err != nil {
		return Context{}, err
	}
	if len(cs) == 0 || cs[0].State == catalog.StatePurged {
		return Context{}, catalog.NotFound("tenant_not_found", "tenant %s does not exist", what)
	}
	return cs[0], nil
}

// BySlug returns the context of the tenant with slug.
func (s *Source) BySlug(ctx context.Context, slug string) (Context, error) {
	cs, _, err := s.lookup(ctx, func(st *catalog.Store) ([]catalog.Tenant, error) {
		t, err := st.GetTenant(ctx, slug)
		if catalog.IsCode(err, "tenant_not_found") {
			return nil, nil
		}
		return []catalog.Tenant{t}, err
	})
	return one(cs, err, slug)
}

// ByID returns the context of the tenant id.
func (s *Source) ByID(ctx context.Context, id uuid.UUID) (Context, error) {
	cs, _, err := s.lookup(ctx, func(st *catalog.Store) ([]catalog.Tenant, error) {
		t, err := st.GetTenantByID(ctx, id)
		if catalog.IsCode(err, "tenant_not_found") {
			return nil, nil
		}
		return []catalog.Tenant{t}, err
	})
	return one(cs, err, id.String())
}

// ByDomain returns the context of the tenant that proved control of domain.
func (s *Source) ByDomain(ctx context.Context, domain string) (Context, error) {
	cs, _, err := s.lookup(ctx, func(st *catalog.Store) ([]catalog.Tenant, error) {
		id, ok, err := st.DomainTenant(ctx, domain)
		if err != nil || !ok {
			return nil, err
		}
		t, err := st.GetTenantByID(ctx, id)
		return []catalog.Tenant{t}, err
	})
	return one(cs, err, domain)
}

// Page is a page of the snapshot.
type Page struct {
	Items []Context `json:"items"`
	// Version is the change-log version the page is current at; a reader
	// follows the feed from the version of its first page.
	Version    int64  `json:"version"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Snapshot returns the contexts of tenants after cursor (a tenant ID), in
// pages of limit, purged tenants left out.
func (s *Source) Snapshot(ctx context.Context, after uuid.UUID, limit int) (Page, error) {
	var next uuid.UUID
	cs, version, err := s.lookup(ctx, func(st *catalog.Store) ([]catalog.Tenant, error) {
		ts, n, err := st.ListTenants(ctx, catalog.TenantFilter{After: after, Limit: limit})
		next = n
		return ts, err
	})
	if err != nil {
		return Page{}, err
	}
	p := Page{Items: []Context{}, Version: version}
	for _, c := range cs {
		if c.State != catalog.StatePurged {
			p.Items = append(p.Items, c)
		}
	}
	if next != uuid.Nil {
		p.NextCursor = next.String()
	}
	return p, nil
}

// Events turns the change log after version `after` into feed events, in
// commit order: one event per tenant touched (carrying its context as of
// now, which is at least as new as the change), one per shard whose
// address may have changed, one when the routes or regions changed, and a
// closing sync. It returns the version to resume after. reset is set when
// changes after `after` were pruned: the reader must reload.
func (s *Source) Events(ctx context.Context, after int64, limit int) (events []Event, next int64, reset bool, err error) {
	pruned, err := s.store.PrunedThrough(ctx)
	if err != nil {
		return nil, after, false, err
	}
	if after < pruned {
		latest, err := s.store.LatestVersion(ctx)
		return []Event{{Type: "reset", Version: latest}}, latest, true, err
	}
	changes, err := s.store.Changes(ctx, after, limit)
	if err != nil || len(changes) == 0 {
		return nil, after, false, err
	}
	next = changes[len(changes)-1].Version
	var tenants []uuid.UUID
	seenTenant, seen := map[uuid.UUID]bool{}, map[string]bool{}
	var shards []string
	for _, c := range changes {
		switch {
		case c.TenantID != nil:
			if !seenTenant[*c.TenantID] {
				seenTenant[*c.TenantID] = true
				tenants = append(tenants, *c.TenantID)
			}
		case c.Entity == "shards":
			if !seen["shard:"+c.EntityID] {
				seen["shard:"+c.EntityID] = true
				shards = append(shards, c.EntityID)
			}
		case c.Entity == "services":
			seen["routes"] = true
		case c.Entity == "regions":
			seen["regions"] = true
		}
	}
	if len(tenants) > 0 {
		cs, _, err := s.lookup(ctx, func(st *catalog.Store) ([]catalog.Tenant, error) {
			var ts []catalog.Tenant
			for _, id := range tenants {
				t, err := st.GetTenantByID(ctx, id)
				if err != nil && !catalog.IsCode(err, "tenant_not_found") {
					return nil, err
				}
				if err == nil {
					ts = append(ts, t)
				}
			}
			return ts, nil
		})
		if err != nil {
			return nil, after, false, err
		}
		byID := map[uuid.UUID]*Context{}
		for i := range cs {
			if cs[i].State != catalog.StatePurged {
				byID[cs[i].TenantID] = &cs[i]
			}
		}
		for _, id := range tenants {
			ev := Event{Type: "tenant", Version: next, TenantID: &id, Context: byID[id]}
			events = append(events, ev)
		}
	}
	if len(shards) > 0 {
		addrs, err := s.shardAddresses(ctx, s.store, true)
		if err != nil {
			return nil, after, false, err
		}
		slices.Sort(shards)
		for _, sh := range shards {
			events = append(events, Event{Type: "shard", Version: next, Shard: sh, Address: addrs[sh]})
		}
	}
	for _, t := range []string{"routes", "regions"} {
		if seen[t] {
			events = append(events, Event{Type: t, Version: next})
		}
	}
	events = append(events, Event{Type: "sync", Version: next})
	return events, next, false, nil
}
