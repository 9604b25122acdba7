package tenantctx

import (
	"cmp"
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// Fetcher is where a Cache gets contexts and changes: the control plane's
// API (Client), or a Source directly inside the control plane.
type Fetcher interface {
	BySlug(ctx context.Context, slug string) (Context, error)
	ByID(ctx context.Context, id uuid.UUID) (Context, error)
	ByDomain(ctx context.Context, domain string) (Context, error)
	Snapshot(ctx context.Context, after uuid.UUID, limit int) (Page, error)
	// Follow calls fn with each event after version `after`, in order,
	// until ctx ends or the stream breaks.
	Follow(ctx context.Context, after int64, fn func(Event) error) error
}

// Errors a lookup can return.
var (
	// ErrNotFound: no such tenant (or it was purged).
	ErrNotFound = errors.New("tenant not found")
	// ErrUnavailable: the control plane cannot be reached and the cache
	// has nothing (fresh enough) to answer with. Never an answer of "not
	// found": the edge says 503, not 404.
	ErrUnavailable = errors.New("tenant context unavailable")
)

// Defaults.
const (
	CapacityDefault    = 100_000
	NegativeTTLDefault = 5 * time.Second
	StaleForDefault    = 10 * time.Minute
	// feedHealthy is how long after its last event or heartbeat the feed
	// counts as live (the server sends a heartbeat every 10 seconds).
	feedHealthy = 25 * time.Second
)

// Config configures a Cache.
type Config struct {
	Fetcher Fetcher
	// Capacity bounds the contexts kept (CapacityDefault).
	Capacity int
	// NegativeTTL is how long an unknown slug or domain is remembered as
	// unknown when the directory is not complete; at most NegativeCapacity
	// are remembered.
	NegativeTTL      time.Duration
	NegativeCapacity int
	// StaleFor is how long contexts are still served when the feed is down
	// (the control plane unreachable): stale-if-error.
	StaleFor time.Duration
	// LoadsPerSecond bounds catalog loads for unknown keys while the
	// directory is incomplete (100 per second by default).
	LoadsPerSecond float64
	// OnEvent, when set, is told of routes and regions events.
	OnEvent func(Event)
	// OnTenant, when set, is told of each tenant the feed changed, after
	// the change is applied: its context, or nil when it is gone.
	OnTenant func(id uuid.UUID, tc *Context)
	Now      func() time.Time
	Logger   *slog.Logger
}

// Status tells how fresh an answer is.
type Status struct {
	// Stale is set when the feed is down and the answer may be out of date.
	Stale bool
	// Age is how long since the cache last heard from the control plane,
	// when Stale.
	Age time.Duration
}

// Cache is an in-process tenant-context cache kept current by the change
// feed. Lookups are lock-light and allocation-free on a hit.
type Cache struct {
	cfg    Config
	seed   maphash.Seed
	shards [64]cacheShard
	group  singleflight.Group
	loads  *rate.Limiter

	mu        sync.RWMutex
	ids       map[uuid.UUID]string   // tenant -> slug, for every cached context
	dir       map[string]uuid.UUID   // the directory: every live slug and verified domain
	names     map[uuid.UUID][]string // tenant -> its keys in dir, to forget them
	dirOK     atomic.Bool            // the directory is complete
	neg       map[string]time.Time   // unknown keys, until
	version   atomic.Int64
	lastSync  atomic.Int64 // unix nanos of the last event or heartbeat
	connected atomic.Bool
	count     atomic.Int64 // contexts in all shards: at most Capacity (+1 per shard)

	Stats Stats
}

// Stats counts what the cache did.
type Stats struct {
	Hits                                                Counter
	Misses, NegativeHits, Loads, Stale, Events, Reloads atomic.Int64
}

// Counter is a counter striped over cache lines: hits on different cores
// would otherwise all write one, and that write costs more than the rest
// of a lookup.
type Counter struct {
	cells [16]struct {
		n atomic.Int64
		_ [56]byte
	}
}

// Load returns the count.
func (c *Counter) Load() int64 {
	var n int64
	for i := range c.cells {
		n += c.cells[i].n.Load()
	}
	return n
}

func (c *Counter) add(stripe uint64) { c.cells[stripe%uint64(len(c.cells))].n.Add(1) }

type cacheShard struct {
	_    [64]byte // a shard's lock does not share a cache line with another's
	mu   sync.RWMutex
	m    map[string]*entry
	ring []string // CLOCK: slugs in slots ("" is a free slot), the hand sweeps
	free []int    // free slots in ring
	hand int
}

type entry struct {
	slot    int // in its shard's ring; guarded by the shard's mu
	ctx     atomic.Pointer[Context]
	visited atomic.Bool
	at      atomic.Int64 // unix nanos it was loaded or confirmed
}

// NewCache returns a Cache. Run keeps it current.
func NewCache(cfg Config) *Cache {
	cfg.Capacity = cmp.Or(cfg.Capacity, CapacityDefault)
	cfg.NegativeTTL = cmp.Or(cfg.NegativeTTL, NegativeTTLDefault)
	cfg.NegativeCapacity = cmp.Or(cfg.NegativeCapacity, 100_000)
	cfg.StaleFor = cmp.Or(cfg.StaleFor, StaleForDefault)
	cfg.LoadsPerSecond = cmp.Or(cfg.LoadsPerSecond, 100)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{cfg: cfg, seed: maphash.MakeSeed(), loads: rate.NewLimiter(rate.Limit(cfg.LoadsPerSecond), int(cfg.LoadsPerSecond)),
		ids: map[uuid.UUID]string{}, dir: map[string]uuid.UUID{}, names: map[uuid.UUID][]string{}, neg: map[string]time.Time{}}
	per := max(cfg.Capacity/len(c.shards), 1)
	for i := range c.shards {
		c.shards[i] = cacheShard{m: make(map[string]*entry, per)}
	}
	return c
}

func (c *Cache) shard(slug string) *cacheShard {
	s, _ := c.shardOf(slug)
	return s
}

// shardOf returns slug's shard and hash.
func (c *Cache) shardOf(slug string) (*cacheShard, uint64) {
	h := maphash.String(c.seed, slug)
	return &c.shards[h&63], h
}

// Version is the change-log version the cache is current at.
func (c *Cache) Version() int64 { return c.version.Load() }

// Connected reports whether the feed is live.
func (c *Cache) Connected() bool {
	return c.connected.Load() && c.cfg.Now().UnixNano()-c.lastSync.Load() < int64(feedHealthy)
}

// Len is the number of contexts held.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Lookup returns the context of the tenant with slug.
func (c *Cache) Lookup(ctx context.Context, slug string) (*Context, Status, error) {
	if e, h := c.get(slug); e != nil {
		if st, ok := c.usable(e, h); ok {
			return e.ctx.Load(), st, nil
		}
	}
	return c.load(ctx, "slug:"+slug, slug, func() *Context { return c.held(slug) },
		func(ctx context.Context) (Context, error) { return c.cfg.Fetcher.BySlug(ctx, slug) })
}

// LookupID returns the context of tenant id.
func (c *Cache) LookupID(ctx context.Context, id uuid.UUID) (*Context, Status, error) {
	c.mu.RLock()
	slug, ok := c.ids[id]
	c.mu.RUnlock()
	if ok {
		if e, h := c.get(slug); e != nil {
			if st, ok := c.usable(e, h); ok {
				return e.ctx.Load(), st, nil
			}
		}
	}
	key := id.String()
	return c.load(ctx, "id:"+key, "", func() *Context { return c.heldID(id) },
		func(ctx context.Context) (Context, error) { return c.cfg.Fetcher.ByID(ctx, id) })
}

// LookupDomain returns the context of the tenant that proved control of domain.
func (c *Cache) LookupDomain(ctx context.Context, domain string) (*Context, Status, error) {
	c.mu.RLock()
	id, ok := c.dir["d:"+domain]
	c.mu.RUnlock()
	var tc *Context
	var st Status
	var err error
	if ok {
		tc, st, err = c.LookupID(ctx, id)
	} else {
		tc, st, err = c.load(ctx, "domain:"+domain, "d:"+domain, func() *Context {
			c.mu.RLock()
			id, ok := c.dir["d:"+domain]
			c.mu.RUnlock()
			if !ok {
				return nil
			}
			return c.heldID(id)
		}, func(ctx context.Context) (Context, error) { return c.cfg.Fetcher.ByDomain(ctx, domain) })
	}
	// The tenant must still hold the domain (it may have just dropped it).
	if err == nil && !slices.Contains(tc.Domains, domain) {
		return nil, Status{}, ErrNotFound
	}
	return tc, st, err
}

// get returns slug's entry, if held, and slug's hash.
func (c *Cache) get(slug string) (*entry, uint64) {
	s, h := c.shardOf(slug)
	s.mu.RLock()
	e := s.m[slug]
	s.mu.RUnlock()
	if e != nil && !e.visited.Load() {
		e.visited.Store(true)
	}
	return e, h
}

// usable says whether a cached context may be served: always while the
// feed is live; for StaleFor after the cache last heard from the control
// plane when it is not (marked stale).
func (c *Cache) usable(e *entry, stripe uint64) (Status, bool) {
	st, ok := c.status(e)
	if ok {
		c.Stats.Hits.add(stripe >> 6)
		if st.Stale {
			c.Stats.Stale.Add(1)
		}
	}
	return st, ok
}

// status is usable without counting.
func (c *Cache) status(e *entry) (Status, bool) {
	now := c.cfg.Now().UnixNano()
	if c.Connected() {
		return Status{}, true
	}
	heard := max(c.lastSync.Load(), e.at.Load())
	if age := time.Duration(now - heard); age < c.cfg.StaleFor {
		if c.lastSync.Load() != 0 {
			return Status{Stale: true, Age: age}, true
		}
		return Status{}, true // no feed is run: entries live for StaleFor
	}
	return Status{}, false
}

// held returns the context cached for slug when it may be served.
func (c *Cache) held(slug string) *Context {
	s := c.shard(slug)
	s.mu.RLock()
	e := s.m[slug]
	s.mu.RUnlock()
	if e == nil {
		return nil
	}
	if _, ok := c.status(e); !ok {
		return nil
	}
	return e.ctx.Load()
}

// heldID returns the context cached for tenant id when it may be served.
func (c *Cache) heldID(id uuid.UUID) *Context {
	c.mu.RLock()
	slug, ok := c.ids[id]
	c.mu.RUnlock()
	if !ok {
		return nil
	}
	return c.held(slug)
}

// errLimited: a load of an unknown key was refused by the limiter.
var errLimited = errors.New("too many tenant-context loads")

// load fetches a context the cache does not hold: one fetch per key at a
// time, unknown keys answered from the directory or remembered for a
// while, and loads of keys the directory does not know bounded. held
// returns what the cache holds for the key by now (a load that just ended
// may have filled it).
func (c *Cache) load(ctx context.Context, key, dirKey string, held func() *Context, fetch func(context.Context) (Context, error)) (*Context, Status, error) {
	c.Stats.Misses.Add(1)
	now := c.cfg.Now()
	if dirKey != "" && c.dirOK.Load() && c.Connected() {
		c.mu.RLock()
		_, known := c.dir[dirKey]
		c.mu.RUnlock()
		if !known {
			c.Stats.NegativeHits.Add(1)
			return nil, Status{}, ErrNotFound
		}
	}
	remembered := func() bool {
		c.mu.RLock()
		until, negative := c.neg[key]
		c.mu.RUnlock()
		return negative && now.Before(until)
	}
	if remembered() {
		c.Stats.NegativeHits.Add(1)
		return nil, Status{}, ErrNotFound
	}
	known := false
	if dirKey != "" {
		c.mu.RLock()
		_, known = c.dir[dirKey]
		c.mu.RUnlock()
	}
	// The limiter and the checks run inside the flight: callers that join
	// one neither spend a load nor are refused, and a caller that arrives
	// just after a flight ended finds its answer instead of fetching again.
	v, err, _ := c.group.Do(key, func() (any, error) {
		if tc := held(); tc != nil {
			return tc, nil
		}
		if remembered() {
			return nil, ErrNotFound
		}
		if !known && !c.loads.Allow() {
			return nil, errLimited
		}
		c.Stats.Loads.Add(1)
		// The load outlives the first caller: others may be waiting on it.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		tc, err := fetch(lctx)
		if err != nil {
			return nil, err
		}
		return c.put(&tc), nil
	})
	switch {
	case err == nil:
		return v.(*Context), Status{}, nil
	case errors.Is(err, ErrNotFound):
		c.mu.Lock()
		if len(c.neg) >= c.cfg.NegativeCapacity {
			clear(c.neg)
		}
		c.neg[key] = now.Add(c.cfg.NegativeTTL)
		c.mu.Unlock()
		return nil, Status{}, ErrNotFound
	case errors.Is(err, errLimited):
		return nil, Status{}, ErrUnavailable
	}
	c.cfg.Logger.Warn("tenant context unavailable", "key", key, "error", err)
	return nil, Status{}, ErrUnavailable
}

// put stores a context (replacing an older one) and returns what is cached.
func (c *Cache) put(tc *Context) *Context {
	tc.id = tc.TenantID.String()
	s := c.shard(tc.Slug)
	now := c.cfg.Now().UnixNano()
	s.mu.Lock()
	if e, ok := s.m[tc.Slug]; ok {
		if cur := e.ctx.Load(); cur.Version > tc.Version {
			s.mu.Unlock()
			return cur
		}
		e.ctx.Store(tc)
		e.at.Store(now)
		s.mu.Unlock()
		c.mu.Lock()
		c.ids[tc.TenantID] = tc.Slug
		c.mu.Unlock()
		c.index(tc)
		return tc
	}
	e := &entry{}
	e.ctx.Store(tc)
	e.at.Store(now)
	var evicted *Context
	// The capacity is the cache's, not a shard's: a shard grows while the
	// cache has room (shards fill unevenly), and evicts from its own ring
	// when it has none.
	full := c.count.Load() >= int64(c.cfg.Capacity)
	switch {
	case len(s.free) > 0 && (!full || len(s.free) == len(s.ring)):
		e.slot = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		s.ring[e.slot] = tc.Slug
		c.count.Add(1)
	case !full || len(s.ring) == 0:
		e.slot = len(s.ring)
		s.ring = append(s.ring, tc.Slug)
		c.count.Add(1)
	default:
		for { // CLOCK: give visited entries a second chance
			slug := s.ring[s.hand]
			victim := s.m[slug]
			if victim == nil || victim.visited.Load() { // a free slot, or visited
				if victim != nil {
					victim.visited.Store(false)
				}
				s.hand = (s.hand + 1) % len(s.ring)
				continue
			}
			evicted = victim.ctx.Load()
			delete(s.m, slug)
			e.slot = s.hand
			s.ring[s.hand] = tc.Slug
			s.hand = (s.hand + 1) % len(s.ring)
			break
		}
	}
	s.m[tc.Slug] = e
	s.mu.Unlock()
	c.mu.Lock()
	if evicted != nil && c.ids[evicted.TenantID] == evicted.Slug {
		delete(c.ids, evicted.TenantID)
	}
	c.ids[tc.TenantID] = tc.Slug
	c.mu.Unlock()
	c.index(tc)
	return tc
}

// index records a context in the ID index and the directory (forgetting
// domains the tenant no longer holds), and forgets that its keys were
// unknown.
func (c *Cache) index(tc *Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forget(tc.TenantID)
	names := make([]string, 0, 1+len(tc.Domains))
	c.dir[tc.Slug] = tc.TenantID
	names = append(names, tc.Slug)
	delete(c.neg, "slug:"+tc.Slug)
	delete(c.neg, "id:"+tc.ID())
	for _, d := range tc.Domains {
		c.dir["d:"+d] = tc.TenantID
		names = append(names, "d:"+d)
		delete(c.neg, "domain:"+d)
	}
	c.names[tc.TenantID] = names
}

// forget drops a tenant's directory keys; c.mu is held.
func (c *Cache) forget(id uuid.UUID) {
	for _, k := range c.names[id] {
		if c.dir[k] == id {
			delete(c.dir, k)
		}
	}
	delete(c.names, id)
}

// remove forgets a tenant that is gone.
func (c *Cache) remove(id uuid.UUID) {
	c.mu.Lock()
	slug, ok := c.ids[id]
	delete(c.ids, id)
	c.forget(id)
	c.mu.Unlock()
	if !ok {
		return
	}
	s := c.shard(slug)
	s.mu.Lock()
	if e, ok := s.m[slug]; ok && e.ctx.Load().TenantID == id {
		delete(s.m, slug)
		s.ring[e.slot] = ""
		s.free = append(s.free, e.slot)
		c.count.Add(-1)
	}
	s.mu.Unlock()
}

// Warm loads the snapshot: the directory of every tenant, and contexts up
// to the capacity. The feed then follows from the snapshot's version.
func (c *Cache) Warm(ctx context.Context) error {
	var cursor uuid.UUID
	var version int64 = -1
	loaded := 0
	for {
		p, err := c.cfg.Fetcher.Snapshot(ctx, cursor, 500)
		if err != nil {
			return err
		}
		if version < 0 {
			version = p.Version
		}
		for i := range p.Items {
			tc := p.Items[i]
			if loaded < c.cfg.Capacity {
				c.put(&tc)
				loaded++
			} else {
				c.index(&tc) // the directory knows every tenant
			}
		}
		if p.NextCursor == "" {
			break
		}
		if cursor, err = uuid.Parse(p.NextCursor); err != nil {
			return err
		}
	}
	c.dirOK.Store(true)
	if version > c.version.Load() {
		c.version.Store(version)
	}
	return nil
}

// Run follows the change feed until ctx ends: it applies every change to
// what the cache holds, reconnects after a break (resuming from the last
// version it saw, so nothing is missed), and reloads when told it fell
// behind the feed's retention.
func (c *Cache) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.cfg.Fetcher.Follow(ctx, c.version.Load(), func(ev Event) error {
			c.connected.Store(true)
			backoff = 100 * time.Millisecond
			return c.apply(ctx, ev)
		})
		c.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		c.cfg.Logger.Warn("tenant-context feed broke; reconnecting", "error", err, "version", c.version.Load())
		select {
		case <-ctx.Done():
		case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)))):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Cache) apply(ctx context.Context, ev Event) error {
	c.Stats.Events.Add(1)
	switch ev.Type {
	case "tenant":
		var id uuid.UUID
		var now *Context // what the cache holds now (a newer context wins)
		switch {
		case ev.Context != nil:
			tc := *ev.Context
			id, now = tc.TenantID, &tc
			c.mu.RLock()
			_, cached := c.ids[tc.TenantID]
			c.mu.RUnlock()
			if cached {
				now = c.put(&tc)
			} else {
				c.index(&tc) // not cached: the directory learns of it
			}
		case ev.TenantID != nil:
			id = *ev.TenantID
			c.remove(id)
		}
		if c.cfg.OnTenant != nil && id != uuid.Nil {
			c.cfg.OnTenant(id, now)
		}
	case "shard":
		c.readdress(ev.Shard, ev.Address)
	case "reset":
		c.Stats.Reloads.Add(1)
		c.dirOK.Store(false)
		for i := range c.shards {
			s := &c.shards[i]
			s.mu.Lock()
			c.count.Add(-int64(len(s.m)))
			clear(s.m)
			s.ring, s.free, s.hand = s.ring[:0], s.free[:0], 0
			s.mu.Unlock()
		}
		c.mu.Lock()
		clear(c.ids)
		clear(c.dir)
		clear(c.names)
		c.mu.Unlock()
		c.version.Store(ev.Version)
		if err := c.Warm(ctx); err != nil {
			return err
		}
	case "routes", "regions":
		if c.cfg.OnEvent != nil {
			c.cfg.OnEvent(ev)
		}
	}
	if ev.Version > c.version.Load() {
		c.version.Store(ev.Version)
	}
	c.lastSync.Store(c.cfg.Now().UnixNano())
	return nil
}

// readdress points cached contexts on shard at its new address.
func (c *Cache) readdress(shard, addr string) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, e := range s.m {
			cur := e.ctx.Load()
			for j, p := range cur.Placements {
				if p.Shard == shard && p.Address != addr {
					next := *cur
					next.Placements = append([]Placement(nil), cur.Placements...)
					next.Placements[j].Address = addr
					e.ctx.Store(&next)
					cur = &next
				}
			}
		}
		s.mu.Unlock()
	}
}
