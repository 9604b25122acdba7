package tenantctx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// fakeFetcher stands for the control plane's API: tenants in memory, a
// change feed the test drives, and a switch that takes it all down.
type fakeFetcher struct {
	mu      sync.Mutex
	bySlug  map[string]Context
	streams []chan struct{} // open Follow calls; closed by cut
	version int64

	down   atomic.Bool   // every call fails
	gate   chan struct{} // when set, fetches wait for it to close
	events chan Event    // the feed: Follow passes these on

	slugFetches, idFetches, domainFetches, snapshots, follows atomic.Int64
}

var errDown = errors.New("control plane down")

func newFake(cs ...Context) *fakeFetcher {
	f := &fakeFetcher{bySlug: map[string]Context{}, events: make(chan Event, 64)}
	for _, c := range cs {
		f.set(c)
	}
	return f
}

func (f *fakeFetcher) set(c Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bySlug[c.Slug] = c
}

func (f *fakeFetcher) find(match func(Context) bool) (Context, error) {
	if f.gate != nil {
		<-f.gate
	}
	if f.down.Load() {
		return Context{}, errDown
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.bySlug {
		if match(c) {
			return c, nil
		}
	}
	return Context{}, ErrNotFound
}

func (f *fakeFetcher) BySlug(_ context.Context, slug string) (Context, error) {
	f.slugFetches.Add(1)
	return f.find(func(c Context) bool { return c.Slug == slug })
}

func (f *fakeFetcher) ByID(_ context.Context, id uuid.UUID) (Context, error) {
	f.idFetches.Add(1)
	return f.find(func(c Context) bool { return c.TenantID == id })
}

func (f *fakeFetcher) ByDomain(_ context.Context, domain string) (Context, error) {
	f.domainFetches.Add(1)
	return f.find(func(c Context) bool { return slices.Contains(c.Domains, domain) })
}

func (f *fakeFetcher) Snapshot(_ context.Context, after uuid.UUID, limit int) (Page, error) {
	f.snapshots.Add(1)
	if f.down.Load() {
		return Page{}, errDown
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	all := make([]Context, 0, len(f.bySlug))
	for _, c := range f.bySlug {
		all = append(all, c)
	}
	slices.SortFunc(all, func(a, b Context) int { return strings.Compare(a.TenantID.String(), b.TenantID.String()) })
	p := Page{Items: []Context{}, Version: f.version}
	for _, c := range all {
		if after != uuid.Nil && c.TenantID.String() <= after.String() {
			continue
		}
		if len(p.Items) == limit {
			p.NextCursor = p.Items[len(p.Items)-1].TenantID.String()
			break
		}
		p.Items = append(p.Items, c)
	}
	return p, nil
}

// Follow says it is live (a sync), then passes on the test's events until
// ctx ends or the test cuts the feed.
func (f *fakeFetcher) Follow(ctx context.Context, after int64, fn func(Event) error) error {
	f.follows.Add(1)
	if f.down.Load() {
		return errDown
	}
	stream := make(chan struct{})
	f.mu.Lock()
	f.streams = append(f.streams, stream)
	f.mu.Unlock()
	if err := fn(Event{Type: "sync", Version: after}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stream:
			return errDown
		case ev := <-f.events:
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}

// cut takes the control plane down: open feeds break, every call fails.
func (f *fakeFetcher) cut() {
	f.down.Store(true)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		close(s)
	}
	f.streams = nil
}

// clock is an injected Config.Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func tenant(slug string, domains ...string) Context {
	return Context{TenantID: uuid.New(), Slug: slug, State: catalog.StateActive, Tier: 1, Region: "r1", Version: 1,
		Placements: []Placement{{Product: "notes", Shard: "s1", Address: "10.0.0.1:5432", Database: "t_" + slug, SchemaVersion: 2}},
		Domains:    domains}
}

// run runs c.Run until the test ends.
func run(t *testing.T, c *Cache) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestLookupHitAndMiss(t *testing.T) {
	t.Parallel()
	acme := tenant("acme", "acme.example.com")
	tests := []struct {
		name   string
		lookup func(*Cache) (*Context, Status, error)
		// fetches counts the calls the fake saw of the kind the lookup makes.
		fetches func(*fakeFetcher) int64
	}{
		{"slug", func(c *Cache) (*Context, Status, error) { return c.Lookup(context.Background(), "acme") },
			func(f *fakeFetcher) int64 { return f.slugFetches.Load() }},
		{"id", func(c *Cache) (*Context, Status, error) { return c.LookupID(context.Background(), acme.TenantID) },
			func(f *fakeFetcher) int64 { return f.idFetches.Load() }},
		{"domain", func(c *Cache) (*Context, Status, error) {
			return c.LookupDomain(context.Background(), "acme.example.com")
		}, func(f *fakeFetcher) int64 { return f.domainFetches.Load() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(acme)
			c := NewCache(Config{Fetcher: f, Now: newClock().Now})
			for i, want := range []struct{ hits, misses, fetches int64 }{{0, 1, 1}, {1, 1, 1}, {2, 1, 1}} {
				tc, st, err := tt.lookup(c)
				if err != nil || tc == nil || tc.TenantID != acme.TenantID || tc.Slug != "acme" || st.Stale {
					t.Fatalf("lookup %d = %+v, %+v, %v", i, tc, st, err)
				}
				got := struct{ hits, misses, fetches int64 }{c.Stats.Hits.Load(), c.Stats.Misses.Load(), tt.fetches(f)}
				if got != want {
					t.Fatalf("after lookup %d: hits, misses, fetches = %v, want %v", i, got, want)
				}
			}
			// Once held, the context answers every kind of key without a fetch.
			before := f.slugFetches.Load() + f.idFetches.Load() + f.domainFetches.Load()
			for _, lookup := range tests {
				if tc, _, err := lookup.lookup(c); err != nil || tc.TenantID != acme.TenantID {
					t.Fatalf("%s lookup after a %s load: %+v, %v", lookup.name, tt.name, tc, err)
				}
			}
			if after := f.slugFetches.Load() + f.idFetches.Load() + f.domainFetches.Load(); after != before {
				t.Fatalf("lookups of a held context fetched %d times", after-before)
			}
			if c.Len() != 1 {
				t.Fatalf("Len = %d, want 1", c.Len())
			}
		})
	}
}

func TestConcurrentMissesFetchOnce(t *testing.T) {
	t.Parallel()
	acme := tenant("acme", "acme.example.com")
	tests := []struct {
		name   string
		gated  bool // the fetch waits until every lookup has started
		lookup func(*Cache) (*Context, Status, error)
	}{
		{"slug, slow fetch", true, func(c *Cache) (*Context, Status, error) { return c.Lookup(context.Background(), "acme") }},
		{"slug, fast fetch", false, func(c *Cache) (*Context, Status, error) { return c.Lookup(context.Background(), "acme") }},
		{"id, fast fetch", false, func(c *Cache) (*Context, Status, error) { return c.LookupID(context.Background(), acme.TenantID) }},
		{"domain, fast fetch", false, func(c *Cache) (*Context, Status, error) {
			return c.LookupDomain(context.Background(), "acme.example.com")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(acme)
			if tt.gated {
				f.gate = make(chan struct{})
			}
			c := NewCache(Config{Fetcher: f})
			const n = 1000
			var started, wg sync.WaitGroup
			started.Add(n)
			start := make(chan struct{})
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					started.Done()
					<-start
					tc, _, err := tt.lookup(c)
					if err == nil && tc.TenantID != acme.TenantID {
						err = fmt.Errorf("got tenant %s", tc.Slug)
					}
					errs <- err
				}()
			}
			started.Wait()
			close(start)
			if tt.gated {
				testkit.Eventually(t, 30*time.Second, "the first lookup to reach the fetcher", func() (bool, error) {
					return f.slugFetches.Load() > 0, nil
				})
				close(f.gate)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("a concurrent lookup failed: %v", err)
				}
			}
			if got := f.slugFetches.Load() + f.idFetches.Load() + f.domainFetches.Load(); got != 1 {
				t.Fatalf("%d concurrent lookups of one uncached tenant fetched %d times, want 1", n, got)
			}
			if got := c.Stats.Loads.Load(); got != 1 {
				t.Fatalf("Stats.Loads = %d, want 1", got)
			}
		})
	}
}

func TestUnknownKeysAreRememberedBriefly(t *testing.T) {
	t.Parallel()
	t.Run("second lookup answered from memory, until NegativeTTL", func(t *testing.T) {
		t.Parallel()
		f, clk := newFake(tenant("acme")), newClock()
		c := NewCache(Config{Fetcher: f, Now: clk.Now, NegativeTTL: time.Minute})
		steps := []struct {
			advance     time.Duration
			wantFetches int64
		}{
			{0, 1},                  // the first lookup asks
			{0, 1},                  // the second is answered from memory
			{59 * time.Second, 1},   // still within NegativeTTL
			{time.Second, 2},        // NegativeTTL passed: ask again
			{30 * time.Second, 2},   // remembered again
			{30*time.Second + 1, 3}, // and forgotten again
			{0, 3},                  // remembered
			{time.Minute - 1, 3},    // remembered
		}
		for i, s := range steps {
			clk.Advance(s.advance)
			if _, _, err := c.Lookup(context.Background(), "nosuch"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("step %d: err = %v, want ErrNotFound", i, err)
			}
			if got := f.slugFetches.Load(); got != s.wantFetches {
				t.Fatalf("step %d: %d fetches, want %d", i, got, s.wantFetches)
			}
		}
		if got := c.Stats.NegativeHits.Load(); got != 5 {
			t.Fatalf("NegativeHits = %d, want 5", got)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		t.Parallel()
		const capacity = 8
		f := newFake()
		c := NewCache(Config{Fetcher: f, NegativeCapacity: capacity, LoadsPerSecond: 1e6})
		for i := range 100 {
			if _, _, err := c.Lookup(context.Background(), fmt.Sprintf("nosuch-%d", i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("lookup %d: %v", i, err)
			}
			c.mu.RLock()
			n := len(c.neg)
			c.mu.RUnlock()
			if n > capacity || n == 0 {
				t.Fatalf("after %d unknown slugs the cache remembers %d, want 1..%d", i+1, n, capacity)
			}
		}
		if got := f.slugFetches.Load(); got != 100 {
			t.Fatalf("%d fetches for 100 distinct unknown slugs", got)
		}
	})
	t.Run("a tenant created later is found at once", func(t *testing.T) {
		t.Parallel()
		f := newFake()
		c := NewCache(Config{Fetcher: f, Now: newClock().Now, NegativeTTL: time.Hour})
		if _, _, err := c.Lookup(context.Background(), "later"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("before: %v", err)
		}
		later := tenant("later")
		f.set(later)
		// The feed tells of the new tenant: the cache forgets it was unknown.
		if err := c.apply(context.Background(), Event{Type: "tenant", Version: 2, TenantID: &later.TenantID, Context: &later}); err != nil {
			t.Fatal(err)
		}
		if tc, _, err := c.Lookup(context.Background(), "later"); err != nil || tc.TenantID != later.TenantID {
			t.Fatalf("after the feed told of it: %+v, %v", tc, err)
		}
	})
}

func TestWarmDirectoryAnswersUnknownKeys(t *testing.T) {
	t.Parallel()
	var ts []Context
	for i := range 1200 { // three snapshot pages
		ts = append(ts, tenant(fmt.Sprintf("t%04d", i), fmt.Sprintf("t%04d.example.com", i)))
	}
	f := newFake(ts...)
	f.version = 42
	c := NewCache(Config{Fetcher: f, Capacity: 640}) // holds 640 of the 1,200
	if err := c.Warm(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.snapshots.Load(); got != 3 {
		t.Fatalf("Warm read %d snapshot pages, want 3", got)
	}
	if n := c.Len(); c.Version() != 42 || n == 0 || n > 640 {
		t.Fatalf("after Warm: version %d, %d held; want 42, 1..640", c.Version(), n)
	}
	run(t, c)
	testkit.Eventually(t, 30*time.Second, "the feed to be live", func() (bool, error) { return c.Connected(), nil })

	var held, notHeld string
	for _, tc := range ts {
		if e, _ := c.get(tc.Slug); e != nil {
			held = tc.Slug
		} else {
			notHeld = tc.Slug
		}
	}
	tests := []struct {
		name        string
		lookup      func() (*Context, Status, error)
		wantErr     error
		wantFetches int64
	}{
		{"unknown slug", func() (*Context, Status, error) { return c.Lookup(context.Background(), "nosuch") }, ErrNotFound, 0},
		{"unknown domain", func() (*Context, Status, error) { return c.LookupDomain(context.Background(), "nosuch.example.com") }, ErrNotFound, 0},
		{"held slug", func() (*Context, Status, error) { return c.Lookup(context.Background(), held) }, nil, 0},
		{"known slug not held", func() (*Context, Status, error) { return c.Lookup(context.Background(), notHeld) }, nil, 1},
		{"known domain not held", func() (*Context, Status, error) {
			return c.LookupDomain(context.Background(), notHeld+".example.com")
		}, nil, 0}, // the directory knows its tenant, now held by the row above
	}
	for _, tt := range tests { // in order: the rows build on each other
		before := f.slugFetches.Load() + f.idFetches.Load() + f.domainFetches.Load()
		tc, _, err := tt.lookup()
		if !errors.Is(err, tt.wantErr) || (err == nil && tc == nil) {
			t.Fatalf("%s: %+v, %v; want error %v", tt.name, tc, err, tt.wantErr)
		}
		if got := f.slugFetches.Load() + f.idFetches.Load() + f.domainFetches.Load() - before; got != tt.wantFetches {
			t.Fatalf("%s: %d fetches, want %d", tt.name, got, tt.wantFetches)
		}
	}

	// With the feed down the directory may be out of date: an unknown slug
	// is asked for, and with the control plane down that is "unavailable",
	// never "not found".
	f.cut()
	testkit.Eventually(t, 30*time.Second, "the cache to notice the feed is down", func() (bool, error) { return !c.Connected(), nil })
	before := f.slugFetches.Load()
	if _, _, err := c.Lookup(context.Background(), "nosuch-2"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unknown slug with the feed down: %v, want ErrUnavailable", err)
	}
	if f.slugFetches.Load() != before+1 {
		t.Fatalf("an unknown slug with the feed down was not asked for")
	}
}

func TestStaleIfError(t *testing.T) {
	t.Parallel()
	acme, globex := tenant("acme"), tenant("globex")
	f, clk := newFake(acme, globex), newClock()
	c := NewCache(Config{Fetcher: f, Now: clk.Now, StaleFor: 10 * time.Minute})
	run(t, c)
	testkit.Eventually(t, 30*time.Second, "the feed to be live", func() (bool, error) { return c.Connected(), nil })
	if tc, st, err := c.Lookup(context.Background(), "acme"); err != nil || tc.TenantID != acme.TenantID || st.Stale {
		t.Fatalf("with the feed live: %+v, %+v, %v", tc, st, err)
	}

	f.cut()
	testkit.Eventually(t, 30*time.Second, "the cache to notice the feed is down", func() (bool, error) { return !c.Connected(), nil })
	steps := []struct {
		name    string
		advance time.Duration
		slug    string
		wantErr error
		wantAge time.Duration // when the answer is a (stale) context
	}{
		{"known, just down", 0, "acme", nil, 0},
		{"known, 5 minutes down", 5 * time.Minute, "acme", nil, 5 * time.Minute},
		{"known, just under StaleFor", 5*time.Minute - time.Nanosecond, "acme", nil, 10*time.Minute - time.Nanosecond},
		{"never loaded: cannot be reloaded", 0, "globex", ErrUnavailable, 0},
		{"unknown: cannot be asked", 0, "nosuch", ErrUnavailable, 0},
		{"known, StaleFor passed: cannot be reloaded", time.Nanosecond, "acme", ErrUnavailable, 0},
		{"known, an hour down", time.Hour, "acme", ErrUnavailable, 0},
	}
	for _, s := range steps {
		clk.Advance(s.advance)
		tc, st, err := c.Lookup(context.Background(), s.slug)
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) || errors.Is(err, ErrNotFound) || tc != nil {
				t.Fatalf("%s: %+v, %v; want %v", s.name, tc, err, s.wantErr)
			}
			continue
		}
		if err != nil || tc.Slug != s.slug || !st.Stale || st.Age != s.wantAge {
			t.Fatalf("%s: %+v, %+v, %v; want a stale context aged %s", s.name, tc, st, err, s.wantAge)
		}
	}
	if c.Stats.Stale.Load() != 3 {
		t.Fatalf("Stats.Stale = %d, want 3", c.Stats.Stale.Load())
	}

	// The control plane comes back: the cache follows it again and answers fresh.
	f.down.Store(false)
	testkit.Eventually(t, time.Minute, "the feed to be live again", func() (bool, error) { return c.Connected(), nil })
	if tc, st, err := c.Lookup(context.Background(), "acme"); err != nil || tc.TenantID != acme.TenantID || st.Stale {
		t.Fatalf("after the control plane came back: %+v, %+v, %v", tc, st, err)
	}
}

func TestFeedEventsUpdateTheCache(t *testing.T) {
	t.Parallel()
	acme := tenant("acme", "acme.example.com", "www.acme.example.com")
	f := newFake(acme)
	var routes atomic.Int64
	var told sync.Mutex
	var tenants []string // what OnTenant was told: a state, or "gone"
	c := NewCache(Config{Fetcher: f, OnEvent: func(ev Event) {
		if ev.Type == "routes" {
			routes.Add(1)
		}
	}, OnTenant: func(id uuid.UUID, tc *Context) {
		told.Lock()
		defer told.Unlock()
		if id != acme.TenantID {
			tenants = append(tenants, "another tenant")
		} else if tc == nil {
			tenants = append(tenants, "gone")
		} else {
			tenants = append(tenants, string(tc.State))
		}
	}})
	ctx := context.Background()
	for _, lookup := range []func() error{
		func() error { _, _, err := c.Lookup(ctx, "acme"); return err },
		func() error { _, _, err := c.LookupDomain(ctx, "www.acme.example.com"); return err },
	} {
		if err := lookup(); err != nil {
			t.Fatal(err)
		}
	}
	run(t, c)
	testkit.Eventually(t, 30*time.Second, "the feed to be live", func() (bool, error) { return c.Connected(), nil })

	with := func(version int64, change func(*Context)) *Context {
		next := acme
		next.Placements = slices.Clone(acme.Placements)
		next.Domains = slices.Clone(acme.Domains)
		next.Version = version
		change(&next)
		return &next
	}
	steps := []struct {
		name   string
		before func() // what the control plane serves from now on
		event  Event
		check  func() error
	}{
		{"suspended", nil, Event{Type: "tenant", Version: 10, TenantID: &acme.TenantID,
			Context: with(10, func(c *Context) { c.State = catalog.StateSuspended })}, func() error {
			tc, _, err := c.Lookup(ctx, "acme")
			if err != nil || tc.State != catalog.StateSuspended || tc.Version != 10 {
				return fmt.Errorf("lookup = %+v, %v", tc, err)
			}
			return nil
		}},
		{"an older context is not applied over a newer one", nil, Event{Type: "tenant", Version: 11, TenantID: &acme.TenantID,
			Context: with(9, func(c *Context) { c.State = catalog.StateActive })}, func() error {
			tc, _, err := c.Lookup(ctx, "acme")
			if err != nil || tc.State != catalog.StateSuspended || c.Version() != 11 {
				return fmt.Errorf("lookup = %+v, %v (cache at %d)", tc, err, c.Version())
			}
			return nil
		}},
		{"shard moved", nil, Event{Type: "shard", Version: 12, Shard: "s1", Address: "10.0.0.2:5432"}, func() error {
			tc, _, err := c.Lookup(ctx, "acme")
			if err != nil {
				return err
			}
			if p, ok := tc.Placement("notes"); !ok || p.Address != "10.0.0.2:5432" {
				return fmt.Errorf("placement = %+v", tc.Placements)
			}
			return nil
		}},
		{"a domain removed is no longer served", func() {
			f.set(*with(13, func(c *Context) { c.Domains = []string{"acme.example.com"} }))
		}, Event{Type: "tenant", Version: 13, TenantID: &acme.TenantID, Context: with(13, func(c *Context) { c.State, c.Domains = catalog.StateActive, []string{"acme.example.com"} })}, func() error {
			if tc, _, err := c.LookupDomain(ctx, "acme.example.com"); err != nil || tc.TenantID != acme.TenantID {
				return fmt.Errorf("the kept domain: %+v, %v", tc, err)
			}
			if tc, _, err := c.LookupDomain(ctx, "www.acme.example.com"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("the removed domain: %+v, %v", tc, err)
			}
			return nil
		}},
		{"routes", nil, Event{Type: "routes", Version: 14}, func() error {
			if routes.Load() != 1 {
				return fmt.Errorf("OnEvent saw %d routes events", routes.Load())
			}
			return nil
		}},
		{"gone", func() {
			f.mu.Lock()
			delete(f.bySlug, "acme")
			f.mu.Unlock()
		}, Event{Type: "tenant", Version: 15, TenantID: &acme.TenantID}, func() error {
			if tc, _, err := c.Lookup(ctx, "acme"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("lookup = %+v, %v", tc, err)
			}
			if tc, _, err := c.LookupID(ctx, acme.TenantID); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("lookup by ID = %+v, %v", tc, err)
			}
			return nil
		}},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		f.events <- s.event
		testkit.Eventually(t, 30*time.Second, s.name, func() (bool, error) {
			if c.Version() < s.event.Version {
				return false, fmt.Errorf("cache at version %d", c.Version())
			}
			err := s.check()
			return err == nil, err
		})
	}
	told.Lock()
	defer told.Unlock()
	if want := []string{"suspended", "suspended", "active", "gone"}; !slices.Equal(tenants, want) {
		t.Fatalf("OnTenant was told %v, want %v", tenants, want)
	}
}

func TestReadEventsRoundTrip(t *testing.T) {
	t.Parallel()
	acme := tenant("acme", "acme.example.com")
	events := []Event{
		{Type: "tenant", Version: 7, TenantID: &acme.TenantID, Context: &acme},
		{Type: "tenant", Version: 8, TenantID: &acme.TenantID},
		{Type: "shard", Version: 9, Shard: "s1", Address: "10.0.0.9:5432"},
		{Type: "routes", Version: 10},
		{Type: "regions", Version: 10},
		{Type: "sync", Version: 10},
		{Type: "reset", Version: 99},
	}
	var buf bytes.Buffer
	for _, ev := range events {
		if err := WriteEvent(&buf, ev); err != nil {
			t.Fatal(err)
		}
	}
	var got []Event
	err := ReadEvents(&buf, func(ev Event) error { got = append(got, ev); return nil })
	if !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
	if !reflect.DeepEqual(got, events) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, events)
	}
}

func TestReadEvents(t *testing.T) {
	t.Parallel()
	stop := errors.New("stop")
	tests := []struct {
		name    string
		input   string
		fnErr   error
		want    []Event
		wantErr string // a substring; "" means io.EOF
	}{
		{"empty", "", nil, nil, ""},
		{"comments and unknown fields", ": heartbeat\nretry: 10\nid: 1\nevent: sync\ndata: {\"type\":\"sync\",\"version\":1}\n\n", nil,
			[]Event{{Type: "sync", Version: 1}}, ""},
		{"no space after data:", "data:{\"type\":\"sync\",\"version\":2}\n\n", nil, []Event{{Type: "sync", Version: 2}}, ""},
		{"CRLF line ends", "data: {\"type\":\"sync\",\"version\":3}\r\n\r\n", nil, []Event{{Type: "sync", Version: 3}}, ""},
		{"data over several lines", "data: {\"type\":\ndata: \"sync\",\"version\":4}\n\n", nil, []Event{{Type: "sync", Version: 4}}, ""},
		{"blank lines alone", "\n\n\n", nil, nil, ""},
		{"an event cut off by the end of the stream is dropped", "data: {\"type\":\"sync\",\"version\":5}\n", nil, nil, ""},
		{"unknown event types are passed on", "data: {\"type\":\"future\",\"version\":6,\"extra\":1}\n\n", nil,
			[]Event{{Type: "future", Version: 6}}, ""},
		{"not JSON", "data: {nope\n\n", nil, nil, "not valid"},
		{"no type", "data: {\"version\":7}\n\n", nil, nil, "no type"},
		{"null", "data: null\n\n", nil, nil, "no type"},
		{"the callback's error ends the stream", "data: {\"type\":\"sync\",\"version\":8}\n\ndata: {\"type\":\"sync\",\"version\":9}\n\n", stop,
			[]Event{{Type: "sync", Version: 8}}, "stop"},
		{"a line over 1 MiB", "data: \"" + strings.Repeat("x", 1<<20) + "\"\n\n", nil, nil, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []Event
			err := ReadEvents(strings.NewReader(tt.input), func(ev Event) error {
				got = append(got, ev)
				return tt.fnErr
			})
			switch {
			case tt.wantErr == "" && !errors.Is(err, io.EOF):
				t.Fatalf("err = %v, want io.EOF", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("events = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// endlessData is a stream of data lines that never ends an event.
type endlessData struct{ left int }

func (r *endlessData) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	line := "data: " + strings.Repeat("x", 1000) + "\n"
	n := 0
	for n+len(line) <= len(p) && r.left > 0 {
		n += copy(p[n:], line)
		r.left -= len(line)
	}
	if n == 0 {
		n = copy(p, line[:min(len(p), len(line))])
		r.left -= n
	}
	return n, nil
}

func TestReadEventsBoundsAnEvent(t *testing.T) {
	t.Parallel()
	// 64 MiB of data lines with no blank line between them: a reader that
	// kept it all would hold it all; ReadEvents gives up at 1 MiB.
	r := &endlessData{left: 64 << 20}
	err := ReadEvents(r, func(Event) error { return nil })
	if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want one saying the event is too large", err)
	}
	if r.left < 60<<20 {
		t.Fatalf("ReadEvents read %d bytes of one event before giving up", 64<<20-r.left)
	}
}

func TestWriteEventKeepsFraming(t *testing.T) {
	t.Parallel()
	// A type with a line break must not be able to add lines to the stream.
	ev := Event{Type: "sync\ndata: {\"type\":\"reset\",\"version\":1}\n", Version: 3}
	var buf bytes.Buffer
	if err := WriteEvent(&buf, ev); err != nil {
		t.Fatal(err)
	}
	var got []Event
	if err := ReadEvents(&buf, func(e Event) error { got = append(got, e); return nil }); !errors.Is(err, io.EOF) {
		t.Fatalf("reading it back: %v (stream %q)", err, buf.String())
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], ev) {
		t.Fatalf("read back %+v, want %+v", got, ev)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func FuzzReadEvents(f *testing.F) {
	acme := tenant("acme", "acme.example.com")
	var buf bytes.Buffer
	for _, ev := range []Event{
		{Type: "tenant", Version: 7, TenantID: &acme.TenantID, Context: &acme},
		{Type: "shard", Version: 9, Shard: "s1", Address: "10.0.0.9:5432"},
		{Type: "sync", Version: 10},
	} {
		_ = WriteEvent(&buf, ev)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(": heartbeat\n\ndata: {\"type\":\"reset\",\"version\":1}\n\n"))
	f.Add([]byte("data: {\"type\":\ndata: \"sync\"}\r\n\r\n"))
	f.Add([]byte("data: {\"type\":\"tenant\",\"tenant_id\":\"not-a-uuid\"}\n\n"))
	f.Add([]byte("data: {\"type\":\"a\\nb\",\"version\":-1}\n\n"))
	f.Add([]byte("data:\ndata:\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n := 0
		err := ReadEvents(bytes.NewReader(data), func(ev Event) error {
			n++
			if ev.Type == "" {
				t.Fatalf("an event without a type was passed on: %+v", ev)
			}
			// What was read writes and reads back the same.
			var out bytes.Buffer
			if err := WriteEvent(&out, ev); err != nil {
				t.Fatalf("write back %+v: %v", ev, err)
			}
			var again []Event
			if err := ReadEvents(&out, func(e Event) error { again = append(again, e); return nil }); !errors.Is(err, io.EOF) {
				t.Fatalf("read back %q: %v", out.String(), err)
			}
			// (Compared as JSON: an empty list and a missing one are the same.)
			if len(again) != 1 || !bytes.Equal(mustJSON(t, again[0]), mustJSON(t, ev)) {
				t.Fatalf("round trip of %+v gave %+v", ev, again)
			}
			return nil
		})
		if err == nil {
			t.Fatal("ReadEvents returned nil; a stream always ends with an error (io.EOF at its end)")
		}
		if n > len(data)/2+1 {
			t.Fatalf("%d events from %d bytes", n, len(data))
		}
	})
}

func TestCapacityHoldsAcrossShards(t *testing.T) {
	t.Parallel()
	tests := []struct {
		capacity, tenants int
		removeEvery       int // tenants removed (by a feed event) before the rest are loaded
	}{
		{capacity: 1000, tenants: 1000},
		{capacity: 1000, tenants: 5000},
		{capacity: 10, tenants: 500},
		{capacity: 1000, tenants: 3000, removeEvery: 3},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d in %d, remove every %d", tt.tenants, tt.capacity, tt.removeEvery), func(t *testing.T) {
			t.Parallel()
			f := newFake()
			cs := make([]Context, tt.tenants)
			for i := range cs {
				cs[i] = tenant(fmt.Sprintf("t%05d", i))
				f.set(cs[i])
			}
			c := NewCache(Config{Fetcher: f, Capacity: tt.capacity, LoadsPerSecond: 1e6})
			ctx := context.Background()
			for i, tc := range cs {
				if _, _, err := c.Lookup(ctx, tc.Slug); err != nil {
					t.Fatal(err)
				}
				if tt.removeEvery > 0 && i < tt.capacity && i%tt.removeEvery == 0 {
					if err := c.apply(ctx, Event{Type: "tenant", Version: int64(i + 2), TenantID: &tc.TenantID}); err != nil {
						t.Fatal(err)
					}
				}
				// Shards fill unevenly; the cache as a whole holds what fits,
				// and a shard empty when the cache is full may take one.
				if n, most := c.Len(), min(i+1, tt.capacity+len(c.shards)); n > most {
					t.Fatalf("after %d loads the cache holds %d, more than %d", i+1, n, most)
				}
			}
			if want := min(tt.tenants, tt.capacity); c.Len() < want {
				t.Fatalf("the cache holds %d after %d loads, want %d: it evicts before it is full", c.Len(), tt.tenants, want)
			}
			// Every held context is the one its key names, and answers a hit.
			hits := c.Stats.Hits.Load()
			held := 0
			for _, tc := range cs {
				if e, _ := c.get(tc.Slug); e != nil {
					held++
					if got := e.ctx.Load(); got.TenantID != tc.TenantID {
						t.Fatalf("%s holds %s", tc.Slug, got.Slug)
					}
					if _, _, err := c.Lookup(ctx, tc.Slug); err != nil {
						t.Fatal(err)
					}
				}
			}
			if c.Stats.Hits.Load()-hits != int64(held) || held != c.Len() {
				t.Fatalf("held %d (Len %d), hits %d", held, c.Len(), c.Stats.Hits.Load()-hits)
			}
		})
	}
}
