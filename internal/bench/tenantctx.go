package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/tenantctx"
)

// TenantctxConfig configures `plinth bench tenantctx`.
type TenantctxConfig struct {
	Exe string
	// Tenants is the number of synthetic tenants (100,000); the hit-ratio
	// runs use a cache a tenth that size.
	Tenants int
	// Exponents are the Zipf exponents of the hit-ratio runs.
	Exponents []float64
	// Lookups per hit-ratio run (after as many again to warm up).
	Lookups int
	// Duration of the throughput runs.
	Duration time.Duration
	// Caches follow the real change feed in the invalidation run; Changes
	// are made one after another.
	Caches, Changes int
	// Concurrent lookups of one uncached tenant.
	Concurrent int
	Progress   io.Writer
}

func (c *TenantctxConfig) defaults() error {
	c.Tenants = max(c.Tenants, 0)
	if c.Tenants == 0 {
		c.Tenants = 100_000
	}
	if c.Tenants < 1000 || c.Tenants > 10_000_000 {
		return errors.New("--tenants must be between 1000 and 10000000")
	}
	if len(c.Exponents) == 0 {
		c.Exponents = []float64{1.1, 1.3, 1.5, 1.7, 2.0}
	}
	for _, s := range c.Exponents {
		if !(s > 1 && s <= 10) {
			return fmt.Errorf("a Zipf exponent must be above 1 and at most 10, not %g", s)
		}
	}
	if c.Lookups == 0 {
		c.Lookups = 2_000_000
	}
	if c.Duration == 0 {
		c.Duration = 3 * time.Second
	}
	if c.Caches == 0 {
		c.Caches = 8
	}
	if c.Changes == 0 {
		c.Changes = 100
	}
	if c.Concurrent == 0 {
		c.Concurrent = 10_000
	}
	switch {
	case c.Lookups < 1000 || c.Lookups > 100_000_000:
		return errors.New("--lookups must be between 1000 and 100000000")
	case c.Duration < 100*time.Millisecond || c.Duration > 10*time.Minute:
		return errors.New("--duration must be between 100ms and 10m")
	case c.Caches < 1 || c.Caches > 64:
		return errors.New("--caches must be between 1 and 64")
	case c.Changes < 1 || c.Changes > 10_000:
		return errors.New("--changes must be between 1 and 10000")
	case c.Concurrent < 1 || c.Concurrent > 1_000_000:
		return errors.New("--concurrent must be between 1 and 1000000")
	}
	return nil
}

// TenantctxReport is what `plinth bench tenantctx` measured.
type TenantctxReport struct {
	Machine Machine `json:"machine"`
	Tenants int     `json:"tenants"`
	// Cache hits, against a plain map under a sync.RWMutex holding the same
	// contexts: latency of single lookups timed one by one on every core
	// at once, and lookups per second per core.
	HitCache     NanoStats `json:"hit_latency_cache_ns"`
	HitMap       NanoStats `json:"hit_latency_map_ns"`
	ClockCostNS  float64   `json:"clock_read_pair_ns"` // included in both
	PerCoreCache float64   `json:"lookups_per_second_per_core_cache"`
	PerCoreMap   float64   `json:"lookups_per_second_per_core_map"`
	Cores        int       `json:"cores"`
	// Hit ratios with a cache a tenth of Tenants, by Zipf exponent.
	CacheSize int        `json:"cache_size"`
	HitRatios []HitRatio `json:"hit_ratios"`
	// Memory at Tenants entries, the cache (warmed from a snapshot, so with
	// its directory) and the plain map.
	BytesPerEntryCache float64 `json:"bytes_per_entry_cache"`
	BytesPerEntryMap   float64 `json:"bytes_per_entry_map"`
	// Concurrent lookups of one uncached tenant from the real control
	// plane, and the loads they caused.
	Concurrent      int   `json:"concurrent_lookups"`
	ConcurrentLoads int64 `json:"concurrent_loads"`
	ConcurrentErrs  int   `json:"concurrent_errors"`
	// Invalidation latency from a catalog change (timed from before the
	// API call that commits it) to each cache following the real feed.
	Caches       int   `json:"caches"`
	Changes      int   `json:"changes"`
	Invalidation Stats `json:"invalidation"`
}

// NanoStats are percentiles in nanoseconds.
type NanoStats struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ns"`
	P99  float64 `json:"p99_ns"`
	P999 float64 `json:"p999_ns"`
}

// HitRatio is one hit-ratio run. Ideal is the share of lookups of the
// CacheSize most popular tenants: the best any cache of that size can do on
// a stream of independent lookups.
type HitRatio struct {
	Exponent float64 `json:"zipf_exponent"`
	Cache    float64 `json:"cache"`
	Ideal    float64 `json:"ideal"`
	Loads    int64   `json:"loads"`
}

// Tenantctx runs the tenant-context benchmark: the in-process parts on
// synthetic tenants, the single-flight and invalidation parts against a
// control plane of its own.
func Tenantctx(ctx context.Context, cfg TenantctxConfig) (*TenantctxReport, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	say := progressf(cfg.Progress)
	rep := &TenantctxReport{Tenants: cfg.Tenants, Cores: runtime.GOMAXPROCS(0), CacheSize: cfg.Tenants / 10,
		Concurrent: cfg.Concurrent, Caches: cfg.Caches, Changes: cfg.Changes}
	syn := newSynthetic(cfg.Tenants)

	say("memory at %d entries…", cfg.Tenants)
	var err error
	if rep.BytesPerEntryCache, rep.BytesPerEntryMap, err = entryBytes(ctx, syn); err != nil {
		return nil, err
	}

	say("cache hits vs a map under a RWMutex, %s each…", cfg.Duration)
	if err := hits(ctx, syn, cfg.Duration, rep); err != nil {
		return nil, err
	}

	for _, s := range cfg.Exponents {
		say("hit ratio, Zipf exponent %g, cache of %d, %d lookups…", s, rep.CacheSize, cfg.Lookups)
		hr, err := hitRatio(ctx, syn, s, rep.CacheSize, cfg.Lookups)
		if err != nil {
			return nil, err
		}
		rep.HitRatios = append(rep.HitRatios, hr)
	}

	st, err := startStack(ctx, cfg.Exe, 100, say)
	if err != nil {
		return nil, err
	}
	defer st.stop()
	rep.Machine = machine(st.pgVersion)
	say("provisioning a tenant…")
	if _, err := provisionOne(ctx, st.client, "bench"); err != nil {
		return nil, err
	}
	svc, err := st.client.CreateService(ctx, api.ServiceRequest{Name: "bench-edge", AllowedCallers: []string{}})
	if err != nil {
		return nil, err
	}
	feed := tenantctx.NewClient(st.client.BaseURL, svc.Credential)

	say("%d concurrent lookups of one uncached tenant…", cfg.Concurrent)
	if rep.ConcurrentLoads, rep.ConcurrentErrs, err = concurrentMiss(ctx, feed, cfg.Concurrent); err != nil {
		return nil, err
	}

	say("invalidation: %d changes, %d caches following the feed…", cfg.Changes, cfg.Caches)
	if rep.Invalidation, err = invalidation(ctx, st.client, feed, cfg.Caches, cfg.Changes); err != nil {
		return nil, err
	}
	return rep, nil
}

// synthetic is a Fetcher of n made-up tenants t0000000…: each context is
// built afresh on every fetch, as if decoded from the control plane.
type synthetic struct {
	n     int
	slugs []string
	sync  time.Duration // Follow's heartbeat
}

func newSynthetic(n int) *synthetic {
	s := &synthetic{n: n, slugs: make([]string, n), sync: 5 * time.Second}
	for i := range s.slugs {
		s.slugs[i] = fmt.Sprintf("t%07d", i)
	}
	return s
}

func synthID(i int) uuid.UUID {
	var id uuid.UUID
	binary.BigEndian.PutUint64(id[:8], uint64(i)) // IDs sort as their index
	id[8] = 0x80                                  // RFC 4122 variant
	return id
}

func (s *synthetic) context(i int) tenantctx.Context {
	slug := s.slugs[i]
	return tenantctx.Context{TenantID: synthID(i), Slug: slug, State: catalog.StateActive, Tier: i % 4, Region: "eu-west-1",
		Placements: []tenantctx.Placement{{Product: "tracker", Shard: "eu-west-1-s" + strconv.Itoa(i%16),
			Address: "10.0.3." + strconv.Itoa(i%250) + ":5432", Database: "t_" + strings.ReplaceAll(synthID(i).String(), "-", "")[:24], SchemaVersion: 7}},
		Version: int64(i + 1)}
}

func (s *synthetic) BySlug(_ context.Context, slug string) (tenantctx.Context, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(slug, "t"))
	if err != nil || i < 0 || i >= s.n || s.slugs[i] != slug {
		return tenantctx.Context{}, tenantctx.ErrNotFound
	}
	return s.context(i), nil
}

func (s *synthetic) ByID(_ context.Context, id uuid.UUID) (tenantctx.Context, error) {
	i := int(binary.BigEndian.Uint64(id[:8]))
	if i < 0 || i >= s.n || synthID(i) != id {
		return tenantctx.Context{}, tenantctx.ErrNotFound
	}
	return s.context(i), nil
}

func (s *synthetic) ByDomain(context.Context, string) (tenantctx.Context, error) {
	return tenantctx.Context{}, tenantctx.ErrNotFound
}

func (s *synthetic) Snapshot(_ context.Context, after uuid.UUID, limit int) (tenantctx.Page, error) {
	start := 0
	if after != uuid.Nil {
		start = int(binary.BigEndian.Uint64(after[:8])) + 1
	}
	p := tenantctx.Page{Version: int64(s.n)}
	for i := start; i < s.n && len(p.Items) < limit; i++ {
		p.Items = append(p.Items, s.context(i))
	}
	if end := start + len(p.Items); end < s.n {
		p.NextCursor = synthID(end - 1).String()
	}
	return p, nil
}

// Follow says the feed is live, and keeps saying so, until ctx ends.
func (s *synthetic) Follow(ctx context.Context, after int64, fn func(tenantctx.Event) error) error {
	t := time.NewTicker(s.sync)
	defer t.Stop()
	for {
		if err := fn(tenantctx.Event{Type: "sync", Version: after}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// followed starts c.Run and waits for the feed to be live.
func followed(ctx context.Context, c *tenantctx.Cache) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	stop = func() { cancel(); <-done }
	deadline := time.Now().Add(30 * time.Second)
	for !c.Connected() {
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("the tenant-context feed did not become live")
		}
		time.Sleep(time.Millisecond)
	}
	return stop, nil
}

// heapAfterGC is the live heap.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// entryBytes is the heap a cache warmed with every synthetic tenant holds
// per entry (the contexts, the cache's indexes and its directory), and the
// heap of a plain map of the same contexts.
func entryBytes(ctx context.Context, syn *synthetic) (cache, plain float64, err error) {
	before := heapAfterGC()
	c := tenantctx.NewCache(tenantctx.Config{Fetcher: syn, Capacity: syn.n})
	if err := c.Warm(ctx); err != nil {
		return 0, 0, err
	}
	if c.Len() != syn.n {
		return 0, 0, fmt.Errorf("the cache holds %d of %d contexts", c.Len(), syn.n)
	}
	cache = float64(heapAfterGC()-before) / float64(syn.n)
	runtime.KeepAlive(c)

	before = heapAfterGC()
	m, err := plainMap(ctx, syn)
	if err != nil {
		return 0, 0, err
	}
	plain = float64(heapAfterGC()-before) / float64(syn.n)
	runtime.KeepAlive(m)
	return cache, plain, nil
}

// plainMap is the competitor: every context in a map by slug.
func plainMap(ctx context.Context, syn *synthetic) (map[string]*tenantctx.Context, error) {
	m := map[string]*tenantctx.Context{}
	var cursor uuid.UUID
	for {
		p, err := syn.Snapshot(ctx, cursor, 500)
		if err != nil {
			return nil, err
		}
		for i := range p.Items {
			tc := p.Items[i]
			m[tc.Slug] = &tc
		}
		if p.NextCursor == "" {
			return m, nil
		}
		cursor = uuid.MustParse(p.NextCursor)
	}
}

// hits measures cache hits and the same lookups in a map under a RWMutex:
// one timed run (each lookup timed on its own, on every core at once) and
// one throughput run each.
func hits(ctx context.Context, syn *synthetic, d time.Duration, rep *TenantctxReport) error {
	c := tenantctx.NewCache(tenantctx.Config{Fetcher: syn, Capacity: syn.n})
	if err := c.Warm(ctx); err != nil {
		return err
	}
	stop, err := followed(ctx, c)
	if err != nil {
		return err
	}
	defer stop()
	m, err := plainMap(ctx, syn)
	if err != nil {
		return err
	}
	var mu sync.RWMutex
	// Keys drawn uniformly, so lookups do not all hit the CPU's caches.
	r := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, 1<<20)
	for i := range keys {
		keys[i] = syn.slugs[r.IntN(syn.n)]
	}
	var failed atomic.Int64
	cacheLookup := func(k string) {
		if tc, _, err := c.Lookup(ctx, k); err != nil || tc.Slug != k {
			failed.Add(1)
		}
	}
	mapLookup := func(k string) {
		mu.RLock()
		tc := m[k]
		mu.RUnlock()
		if tc == nil || tc.Slug != k {
			failed.Add(1)
		}
	}
	rep.ClockCostNS = clockCost()
	rep.HitCache = timedLookups(keys, cacheLookup)
	rep.HitMap = timedLookups(keys, mapLookup)
	hits0 := c.Stats.Hits.Load()
	rep.PerCoreCache = lookupRate(keys, d, cacheLookup)
	rep.PerCoreMap = lookupRate(keys, d, mapLookup)
	if failed.Load() > 0 {
		return fmt.Errorf("%d lookups of held tenants failed", failed.Load())
	}
	if c.Stats.Misses.Load() != 0 {
		return fmt.Errorf("%d lookups of held tenants missed", c.Stats.Misses.Load())
	}
	if c.Stats.Hits.Load() == hits0 {
		return errors.New("the cache counted no hits")
	}
	return nil
}

// clockCost is what a pair of clock reads costs (it is part of every timed
// lookup).
func clockCost() float64 {
	const n = 1_000_000
	var sum time.Duration
	for range n {
		t := time.Now()
		sum += time.Since(t)
	}
	return float64(sum) / n
}

// timedLookups times each lookup on its own, on every core at once.
func timedLookups(keys []string, lookup func(string)) NanoStats {
	procs := runtime.GOMAXPROCS(0)
	const per = 500_000
	samples := make([][]time.Duration, procs)
	var wg sync.WaitGroup
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := make([]time.Duration, per)
			off := p * len(keys) / procs
			for i := range s {
				k := keys[(off+i)&(len(keys)-1)]
				t := time.Now()
				lookup(k)
				s[i] = time.Since(t)
			}
			samples[p] = s
		}()
	}
	wg.Wait()
	all := slices.Concat(samples...)
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[max(int(math.Ceil(p*float64(len(all))))-1, 0)]) }
	return NanoStats{N: len(all), P50: pct(0.50), P99: pct(0.99), P999: pct(0.999)}
}

// lookupRate runs lookups on every core for d and returns lookups per
// second per core.
func lookupRate(keys []string, d time.Duration, lookup func(string)) float64 {
	procs := runtime.GOMAXPROCS(0)
	var stop atomic.Bool
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := p * len(keys) / procs; !stop.Load(); {
				for range 1024 {
					lookup(keys[i&(len(keys)-1)])
					i++
				}
				n += 1024
			}
			total.Add(int64(n))
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	return float64(total.Load()) / time.Since(start).Seconds() / float64(procs)
}

// hitRatio looks up Zipf-distributed tenants (rank k is a random tenant)
// in a cache of size entries: lookups to warm up, then as many measured.
func hitRatio(ctx context.Context, syn *synthetic, s float64, size, lookups int) (HitRatio, error) {
	c := tenantctx.NewCache(tenantctx.Config{Fetcher: syn, Capacity: size, LoadsPerSecond: 1e9})
	stop, err := followed(ctx, c)
	if err != nil {
		return HitRatio{}, err
	}
	defer stop()
	r := rand.New(rand.NewPCG(uint64(s*1000), 7))
	zipf := rand.NewZipf(r, s, 1, uint64(syn.n-1))
	perm := r.Perm(syn.n)
	ideal := 0
	var hits0, misses0, loads0 int64
	for phase := range 2 {
		if phase == 1 {
			hits0, misses0, loads0 = c.Stats.Hits.Load(), c.Stats.Misses.Load(), c.Stats.Loads.Load()
		}
		for range lookups {
			rank := int(zipf.Uint64())
			if phase == 1 && rank < size {
				ideal++
			}
			slug := syn.slugs[perm[rank]]
			if tc, _, err := c.Lookup(ctx, slug); err != nil || tc.Slug != slug {
				return HitRatio{}, fmt.Errorf("lookup %s: %v", slug, err)
			}
		}
	}
	hits, misses := c.Stats.Hits.Load()-hits0, c.Stats.Misses.Load()-misses0
	return HitRatio{Exponent: s, Cache: float64(hits) / float64(hits+misses), Ideal: float64(ideal) / float64(lookups),
		Loads: c.Stats.Loads.Load() - loads0}, nil
}

// counted counts the fetches of one tenant a Fetcher makes.
type counted struct {
	tenantctx.Fetcher
	n atomic.Int64
}

func (c *counted) BySlug(ctx context.Context, slug string) (tenantctx.Context, error) {
	c.n.Add(1)
	return c.Fetcher.BySlug(ctx, slug)
}

// concurrentMiss starts n lookups of the one tenant a new cache does not
// hold at once, and counts the loads from the control plane they cause.
func concurrentMiss(ctx context.Context, feed tenantctx.Fetcher, n int) (loads int64, errs int, err error) {
	f := &counted{Fetcher: feed}
	c := tenantctx.NewCache(tenantctx.Config{Fetcher: f})
	var ready, done sync.WaitGroup
	ready.Add(n)
	start := make(chan struct{})
	var failed atomic.Int64
	for range n {
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			if tc, _, err := c.Lookup(ctx, "bench"); err != nil || tc.Slug != "bench" {
				failed.Add(1)
			}
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	if c.Stats.Loads.Load() != f.n.Load() {
		return 0, 0, fmt.Errorf("the cache counted %d loads, the control plane was asked %d times", c.Stats.Loads.Load(), f.n.Load())
	}
	return f.n.Load(), int(failed.Load()), nil
}

// watched tells of each event about one tenant a cache applied, and when.
type watched struct {
	tenantctx.Fetcher
	id   uuid.UUID
	seen chan applied
}

type applied struct {
	at    time.Time
	state catalog.TenantState
}

func (w *watched) Follow(ctx context.Context, after int64, fn func(tenantctx.Event) error) error {
	return w.Fetcher.Follow(ctx, after, func(ev tenantctx.Event) error {
		err := fn(ev)
		if ev.Type == "tenant" && ev.TenantID != nil && *ev.TenantID == w.id && ev.Context != nil {
			select {
			case w.seen <- applied{time.Now(), ev.Context.State}:
			default: // the bench reads every one; never block the feed
			}
		}
		return err
	})
}

// invalidation suspends and resumes the bench tenant changes times, and
// times each change from before the API call that commits it to its being
// applied in each of n caches following the real feed (their own streams).
func invalidation(ctx context.Context, admin *api.Client, feed tenantctx.Fetcher, n, changes int) (Stats, error) {
	t, err := admin.GetTenant(ctx, "bench")
	if err != nil {
		return Stats{}, err
	}
	caches := make([]*tenantctx.Cache, n)
	ws := make([]*watched, n)
	for i := range caches {
		ws[i] = &watched{Fetcher: feed, id: t.ID, seen: make(chan applied, 1024)}
		caches[i] = tenantctx.NewCache(tenantctx.Config{Fetcher: ws[i]})
		if _, _, err := caches[i].Lookup(ctx, "bench"); err != nil {
			return Stats{}, err
		}
		stop, err := followed(ctx, caches[i])
		if err != nil {
			return Stats{}, err
		}
		defer stop()
	}
	var lat []time.Duration
	for i := range changes {
		action, want := catalog.ActionSuspend, catalog.StateSuspended
		if i%2 == 1 {
			action, want = catalog.ActionResume, catalog.StateActive
		}
		t0 := time.Now()
		if _, err := admin.TenantAction(ctx, "bench", action, "bench tenantctx"); err != nil {
			return Stats{}, err
		}
		for j, w := range ws {
			timeout := time.After(30 * time.Second)
		wait:
			for {
				select {
				case a := <-w.seen:
					if a.state == want && a.at.After(t0) {
						lat = append(lat, a.at.Sub(t0))
						break wait
					}
				case <-timeout:
					return Stats{}, fmt.Errorf("cache %d did not see the tenant %s within 30s", j, want)
				}
			}
			if tc, _, err := caches[j].Lookup(ctx, "bench"); err != nil || tc.State != want {
				return Stats{}, fmt.Errorf("cache %d applied the change but answers %+v, %v", j, tc, err)
			}
		}
	}
	return Summarise(lat), nil
}

// PrintTenantctx writes the report as a table, or as JSON.
func PrintTenantctx(w io.Writer, r *TenantctxReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	mark := func(ok bool) string {
		if ok {
			return "✓"
		}
		return "✗"
	}
	fmt.Fprintf(w, "\nplinth bench tenantctx: %d synthetic tenants, %d cores, %s\n\n", r.Tenants, r.Cores, r.Machine.Go)
	fmt.Fprintf(w, "cache hits (each lookup timed on its own, all cores at once; includes %.0f ns of clock reads)\n", r.ClockCostNS)
	fmt.Fprintf(w, "  %-28s %10s %10s %10s %16s\n", "", "p50", "p99", "p99.9", "lookups/s/core")
	fmt.Fprintf(w, "  %-28s %8.0fns %8.0fns %8.0fns %16.0f\n", "(a) tenantctx.Cache", r.HitCache.P50, r.HitCache.P99, r.HitCache.P999, r.PerCoreCache)
	fmt.Fprintf(w, "  %-28s %8.0fns %8.0fns %8.0fns %16.0f\n", "(b) map + sync.RWMutex", r.HitMap.P50, r.HitMap.P99, r.HitMap.P999, r.PerCoreMap)
	fmt.Fprintf(w, "  (a)/(b) throughput %.2f×; p99 ≤ 10 µs %s; ≥ 1 M lookups/s/core %s\n\n",
		r.PerCoreCache/r.PerCoreMap, mark(r.HitCache.P99 <= 10_000), mark(r.PerCoreCache >= 1e6))
	fmt.Fprintf(w, "hit ratio, %d tenants, cache of %d, Zipf-distributed lookups (ideal: the share of the %d most popular)\n", r.Tenants, r.CacheSize, r.CacheSize)
	fmt.Fprintf(w, "  %-10s %9s %9s %9s %8s\n", "exponent", "cache", "ideal", "loads", "≥99.5%")
	for _, h := range r.HitRatios {
		fmt.Fprintf(w, "  %-10.2f %8.2f%% %8.2f%% %9d %8s\n", h.Exponent, 100*h.Cache, 100*h.Ideal, h.Loads, mark(h.Cache >= 0.995))
	}
	fmt.Fprintf(w, "\nmemory at %d entries: cache %.0f B/entry (with its ID index and directory), plain map %.0f B/entry; ≤ 1 KB %s\n",
		r.Tenants, r.BytesPerEntryCache, r.BytesPerEntryMap, mark(r.BytesPerEntryCache <= 1024))
	fmt.Fprintf(w, "%d concurrent lookups of one uncached tenant: %d load(s) from the control plane, %d errors; exactly one %s\n",
		r.Concurrent, r.ConcurrentLoads, r.ConcurrentErrs, mark(r.ConcurrentLoads == 1 && r.ConcurrentErrs == 0))
	fmt.Fprintf(w, "invalidation, %d changes × %d caches on the real feed (from before the API call): p50 %.1f ms, p99 %.1f ms, max %.1f ms; p99 ≤ 1 s %s\n",
		r.Changes, r.Caches, r.Invalidation.P50, r.Invalidation.P99, r.Invalidation.Max, mark(r.Invalidation.P99 <= 1000))
	return nil
}
