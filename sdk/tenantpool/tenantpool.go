// Package tenantpool is the connection manager of a product service that
// serves thousands of tenant databases: it opens connections per tenant
// lazily, keeps the server connections of one process to each shard under a
// hard cap, closes idle ones so an idle tenant holds nothing, and queues
// fairly when the cap is reached, so that one hot tenant cannot starve the
// others.
//
// A Postgres connection belongs to one database, so a connection freed by
// one tenant cannot serve another: when the shard is at its cap and a
// tenant without an idle connection asks, the manager closes the least
// recently used idle connection of another tenant and opens one for it, or
// queues the request. Queued requests are served tenant by tenant in turn
// (round robin), and no tenant holds more than its share of a shard's cap
// while others wait.
//
//	m := tenantpool.New(tenantpool.Config{ShardCap: 40, Connect: connect})
//	defer m.Close()
//	conn, err := m.Acquire(ctx, tenantpool.Key{Tenant: id, Shard: "s1", Address: "10.0.0.5:5432", Database: "t_…"})
//	if err != nil { … }
//	defer conn.Release()
//	conn.QueryRow(ctx, "SELECT …")
package tenantpool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Key names one tenant database: its tenant, and where it lives.
type Key struct {
	Tenant   uuid.UUID
	Shard    string
	Address  string // host:port of the shard (or of a PgBouncer in front of it)
	Database string
}

// Config configures a Manager. Zero values take the defaults.
type Config struct {
	// Connect opens a connection to a tenant database (required).
	Connect func(ctx context.Context, key Key) (*pgx.Conn, error)
	// ShardCap bounds the server connections this process holds to one
	// shard (40).
	ShardCap int
	// TenantShare bounds the connections one tenant holds on a shard while
	// other tenants of that shard wait (a quarter of ShardCap, at least 1).
	TenantShare int
	// IdleTimeout closes connections unused this long (30s); a tenant with
	// none left is forgotten.
	IdleTimeout time.Duration
	// AcquireTimeout bounds a wait for a connection (5s), in addition to
	// the caller's context.
	AcquireTimeout time.Duration
	// ConnectTimeout bounds opening one connection (5s).
	ConnectTimeout time.Duration
	// Affinity is how long another tenant's request may wait while a tenant
	// under its share hands its released connections to its own waiters
	// (1s): a handover costs nothing, a switch costs a connect. Negative
	// switches it off: connections go tenant by tenant in strict turns.
	Affinity time.Duration
	Now      func() time.Time
}

// Defaults.
const (
	ShardCapDefault       = 40
	IdleTimeoutDefault    = 30 * time.Second
	AcquireTimeoutDefault = 5 * time.Second
	ConnectTimeoutDefault = 5 * time.Second
	AffinityDefault       = time.Second
)

// Errors.
var (
	// ErrTimeout: no connection became free in time.
	ErrTimeout = errors.New("timed out waiting for a tenant-database connection")
	// ErrClosed: the manager was closed.
	ErrClosed = errors.New("tenant connection manager closed")
)

// Manager hands out connections to tenant databases.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	shards  map[string]*shard
	tenants map[uuid.UUID]*tenant
	closed  bool

	stop chan struct{}
	done chan struct{}
	bg   sync.WaitGroup // closes in the background

	hits, connects, steals, waits, timeouts, errors atomic.Int64
}

// shard is one shard's share of the process: its cap, its idle connections
// in least-recently-used order, and the tenants waiting in turn.
type shard struct {
	name string
	open int // connections open or being opened
	idle idleList
	// turn is the tenants with waiters, served round robin.
	turn    []*tenant
	next    int
	waiting int

	connects, hits, steals, waits, timeouts int64
}

// tenant is one tenant database's connections.
type tenant struct {
	key     Key
	sh      *shard
	idle    []*pconn // most recently used last
	open    int      // open or being opened, in use or idle
	waiters []*waiter
	retired bool // its key changed or it was forgotten: close what comes back
}

type waiter struct {
	t     *tenant
	since time.Time
	ch    chan grant // buffered: the grant never blocks the granter
}

// grant answers a waiter: a connection handed over, or a slot to open one in.
type grant struct {
	conn *pconn
	slot bool
	// closeFirst is closed by the waiter before it opens a connection in
	// the slot (it held the slot until now).
	closeFirst *pconn
	err        error
}

// New returns a Manager; Close releases it.
func New(cfg Config) *Manager {
	cfg.ShardCap = cmp.Or(cfg.ShardCap, ShardCapDefault)
	if cfg.TenantShare <= 0 {
		cfg.TenantShare = max(cfg.ShardCap/4, 1)
	}
	cfg.TenantShare = min(cfg.TenantShare, cfg.ShardCap)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, IdleTimeoutDefault)
	cfg.AcquireTimeout = cmp.Or(cfg.AcquireTimeout, AcquireTimeoutDefault)
	cfg.ConnectTimeout = cmp.Or(cfg.ConnectTimeout, ConnectTimeoutDefault)
	cfg.Affinity = cmp.Or(cfg.Affinity, AffinityDefault)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Manager{cfg: cfg, shards: map[string]*shard{}, tenants: map[uuid.UUID]*tenant{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go m.reap()
	return m
}

// Conn is a connection to one tenant database, borrowed until Release.
// Each Acquire returns a Conn of its own: releasing it twice is harmless,
// even once the connection is someone else's.
type Conn struct {
	*pgx.Conn
	pc       *pconn
	released atomic.Bool
}

// pconn is a connection the manager holds.
type pconn struct {
	Conn     *pgx.Conn
	m        *Manager
	t        *tenant
	lastUsed time.Time
	idleAt   int // index in its shard's idle list, -1 when in use
}

func (c *pconn) lend() *Conn { return &Conn{Conn: c.Conn, pc: c} }

// Acquire returns a connection to key's database: an idle one of the
// tenant's, a new one while the shard is under its cap (closing another
// tenant's idle connection when it is at it), or the next one freed for
// this tenant in its turn. It waits at most AcquireTimeout.
func (m *Manager) Acquire(ctx context.Context, key Key) (*Conn, error) {
	if key.Tenant == uuid.Nil || key.Address == "" || key.Database == "" {
		return nil, errors.New("tenantpool: a key needs a tenant, an address and a database")
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	t := m.tenant(key)
	sh := t.sh
	if n := len(t.idle); n > 0 {
		c := t.idle[n-1]
		t.idle = t.idle[:n-1]
		sh.idle.remove(c)
		sh.hits++
		m.mu.Unlock()
		m.hits.Add(1)
		return c.lend(), nil
	}
	var victim *pconn
	switch {
	case len(t.waiters) > 0 || t.open >= m.cfg.TenantShare && sh.waiting > 0:
		// Others of this tenant are waiting already, or it holds its share
		// while other tenants wait: take a turn.
	case sh.open < m.cfg.ShardCap:
		sh.open++
		t.open++
		m.mu.Unlock()
		return m.connect(ctx, t)
	case sh.idle.len() > 0 && t.open < m.cfg.TenantShare:
		// At the cap: the least recently used idle connection of another
		// tenant gives up its slot.
		// Its slot passes to t: closed before t's connection is opened, so
		// the shard never sees more than the cap.
		victim = sh.idle.oldest()
		m.detach(victim)
		victim.t.open--
		m.forgetIfIdle(victim.t)
		sh.steals++
		t.open++
		m.mu.Unlock()
		m.steals.Add(1)
		_ = victim.Conn.Close(context.Background())
		return m.connect(ctx, t)
	}
	w := &waiter{t: t, since: m.cfg.Now(), ch: make(chan grant, 1)}
	t.waiters = append(t.waiters, w)
	if len(t.waiters) == 1 {
		sh.turn = append(sh.turn, t)
	}
	sh.waiting++
	sh.waits++
	m.mu.Unlock()
	m.waits.Add(1)

	timer := time.NewTimer(m.cfg.AcquireTimeout)
	defer timer.Stop()
	var g grant
	select {
	case g = <-w.ch:
	case <-ctx.Done():
		if g, ok := m.abandon(w); ok {
			return m.take(ctx, t, g)
		}
		return nil, fmt.Errorf("waiting for a connection to %s on shard %s: %w", key.Database, key.Shard, ctx.Err())
	case <-timer.C:
		if g, ok := m.abandon(w); ok {
			return m.take(ctx, t, g)
		}
		m.timeouts.Add(1)
		return nil, fmt.Errorf("%w: shard %s has all %d connections of this process busy (waited %s)",
			ErrTimeout, key.Shard, m.cfg.ShardCap, m.cfg.AcquireTimeout)
	}
	return m.take(ctx, t, g)
}

// take turns a grant into a connection.
func (m *Manager) take(ctx context.Context, t *tenant, g grant) (*Conn, error) {
	switch {
	case g.err != nil:
		return nil, g.err
	case g.conn != nil:
		m.hits.Add(1)
		return g.conn.lend(), nil
	}
	if g.closeFirst != nil { // the slot's last connection, another tenant's
		_ = g.closeFirst.Conn.Close(context.Background())
	}
	return m.connect(ctx, t)
}

// abandon takes a waiter out of its queue. When it was granted meanwhile,
// ok is set and the grant is returned, for the caller to use.
func (m *Manager) abandon(w *waiter) (grant, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := w.t
	for i, x := range t.waiters {
		if x == w {
			t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
			t.sh.waiting--
			if len(t.waiters) == 0 {
				t.sh.leaveTurn(t)
			}
			t.sh.timeouts++
			m.forgetIfIdle(t)
			return grant{}, false
		}
	}
	return <-w.ch, true // granted already: the grant is in the buffer
}

// connect opens a connection in a slot counted for t.
func (m *Manager) connect(ctx context.Context, t *tenant) (*Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, m.cfg.ConnectTimeout)
	defer cancel()
	pc, err := m.cfg.Connect(cctx, t.key)
	m.connects.Add(1)
	if err != nil {
		m.errors.Add(1)
		m.mu.Lock()
		t.open--
		t.sh.open--
		t.sh.connects++
		m.dispatch(t.sh)
		m.forgetIfIdle(t)
		m.mu.Unlock()
		return nil, fmt.Errorf("connect to %s on shard %s: %w", t.key.Database, t.key.Shard, err)
	}
	m.mu.Lock()
	t.sh.connects++
	m.mu.Unlock()
	return (&pconn{Conn: pc, m: m, t: t, idleAt: -1}).lend(), nil
}

// Release gives the connection back. A connection left in a transaction,
// broken, or of a tenant that moved is closed instead of kept.
func (b *Conn) Release() {
	if b.released.Swap(true) {
		return // twice is once
	}
	c := b.pc
	m, t := c.m, c.t
	healthy := !c.Conn.IsClosed() && c.Conn.PgConn().TxStatus() == 'I' && !c.Conn.PgConn().IsBusy()
	m.mu.Lock()
	if !healthy || t.retired || m.closed {
		m.mu.Unlock()
		m.closeConns([]*pconn{c})
		return
	}
	c.lastUsed = m.cfg.Now()
	sh := t.sh
	w := m.ownWaiter(t)
	if w == nil {
		w = m.nextWaiter(sh)
	}
	switch {
	case w == nil:
		t.idle = append(t.idle, c)
		sh.idle.push(c)
	case w.t == t:
		sh.hits++
		w.ch <- grant{conn: c} // handed over as it is
	default:
		// Another tenant's turn: this connection cannot serve it. The slot
		// passes on, and the waiter closes this connection first.
		t.open--
		w.t.open++
		w.ch <- grant{slot: true, closeFirst: c}
		m.forgetIfIdle(t)
	}
	m.mu.Unlock()
}

// dispatch gives a freed slot of sh to the next waiter; m.mu is held.
func (m *Manager) dispatch(sh *shard) {
	for sh.open < m.cfg.ShardCap {
		w := m.nextWaiter(sh)
		if w == nil {
			return
		}
		sh.open++
		w.t.open++
		w.ch <- grant{slot: true}
	}
}

// nextWaiter dequeues the waiter whose turn it is: tenant by tenant in
// turn, passing over a tenant that holds its share while others wait (or,
// when all do, taking the next anyway). m.mu is held.
func (m *Manager) nextWaiter(sh *shard) *waiter {
	if len(sh.turn) == 0 {
		return nil
	}
	pick := -1
	for range len(sh.turn) {
		if sh.next >= len(sh.turn) {
			sh.next = 0
		}
		t := sh.turn[sh.next]
		if t.open < m.cfg.TenantShare || !sh.waitingOthers(t) {
			pick = sh.next
			break
		}
		sh.next++
	}
	if pick < 0 {
		pick = sh.next % len(sh.turn)
	}
	t := sh.turn[pick]
	w := t.waiters[0]
	t.waiters = t.waiters[1:]
	sh.waiting--
	if len(t.waiters) == 0 {
		sh.leaveTurn(t) // the next tenant moves into this index
		sh.next = pick
	} else {
		sh.next = pick + 1
	}
	return w
}

// ownWaiter dequeues a waiter of t for t's released connection, when t is
// within its share and no other tenant has waited longer than Affinity.
// m.mu is held.
func (m *Manager) ownWaiter(t *tenant) *waiter {
	if m.cfg.Affinity < 0 || len(t.waiters) == 0 || t.open > m.cfg.TenantShare {
		return nil
	}
	sh := t.sh
	if sh.waitingOthers(t) {
		limit := m.cfg.Now().Add(-m.cfg.Affinity)
		for _, o := range sh.turn {
			if o != t && o.waiters[0].since.Before(limit) {
				return nil
			}
		}
	}
	w := t.waiters[0]
	t.waiters = t.waiters[1:]
	sh.waiting--
	if len(t.waiters) == 0 {
		sh.leaveTurn(t)
	}
	return w
}

// waitingOthers reports whether tenants other than t wait on sh.
func (sh *shard) waitingOthers(t *tenant) bool {
	return sh.waiting > len(t.waiters)
}

func (sh *shard) leaveTurn(t *tenant) {
	for i, x := range sh.turn {
		if x == t {
			sh.turn = append(sh.turn[:i], sh.turn[i+1:]...)
			if sh.next > i {
				sh.next--
			}
			return
		}
	}
}

// tenant returns key's tenant, replacing one whose database moved; m.mu
// is held.
func (m *Manager) tenant(key Key) *tenant {
	t, ok := m.tenants[key.Tenant]
	if ok && t.key == key {
		return t
	}
	if ok {
		m.retire(t)
	}
	sh, ok := m.shards[key.Address]
	if !ok {
		sh = &shard{name: key.Shard}
		m.shards[key.Address] = sh
	}
	t = &tenant{key: key, sh: sh}
	m.tenants[key.Tenant] = t
	return t
}

// retire closes a tenant's idle connections and marks it so that those in
// use are closed when released; its waiters are told to retry. m.mu is held.
func (m *Manager) retire(t *tenant) {
	t.retired = true
	if idle := t.idle; len(idle) > 0 {
		for _, c := range idle {
			t.sh.idle.remove(c)
		}
		t.idle = nil
		m.bg.Add(1)
		go func() { // counted until closed
			defer m.bg.Done()
			m.closeConns(idle)
		}()
	}
	for _, w := range t.waiters {
		t.sh.waiting--
		w.ch <- grant{err: errors.New("the tenant's database moved or was closed; retry")}
	}
	if len(t.waiters) > 0 {
		t.sh.leaveTurn(t)
	}
	t.waiters = nil
	if m.tenants[t.key.Tenant] == t {
		delete(m.tenants, t.key.Tenant)
	}
	m.dispatch(t.sh)
}

// Forget closes a tenant's connections (those in use when released): the
// SDK calls it when a tenant is suspended, moved or restored.
func (m *Manager) Forget(id uuid.UUID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tenants[id]; ok {
		m.retire(t)
	}
}

// detach takes an idle connection out of its tenant's and its shard's idle
// lists; it still counts as open. m.mu is held.
func (m *Manager) detach(c *pconn) {
	t := c.t
	t.sh.idle.remove(c)
	for i, x := range t.idle {
		if x == c {
			t.idle = append(t.idle[:i], t.idle[i+1:]...)
			break
		}
	}
}

// closeConns closes connections, then stops counting them and passes their
// slots on, so that a shard never sees more than the cap.
func (m *Manager) closeConns(cs []*pconn) {
	for _, c := range cs {
		_ = c.Conn.Close(context.Background())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		c.t.open--
		c.t.sh.open--
		m.forgetIfIdle(c.t)
		m.dispatch(c.t.sh)
	}
}

// forgetIfIdle drops a tenant that holds and awaits nothing: an idle
// tenant costs no memory. m.mu is held.
func (m *Manager) forgetIfIdle(t *tenant) {
	if t.open == 0 && len(t.waiters) == 0 && m.tenants[t.key.Tenant] == t {
		delete(m.tenants, t.key.Tenant)
	}
}

// reap closes connections idle longer than IdleTimeout.
func (m *Manager) reap() {
	defer close(m.done)
	every := max(m.cfg.IdleTimeout/4, 10*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		m.ReapIdle()
	}
}

// ReapIdle closes the connections idle longer than IdleTimeout now (it
// runs periodically on its own).
func (m *Manager) ReapIdle() {
	cutoff := m.cfg.Now().Add(-m.cfg.IdleTimeout)
	var old []*pconn
	m.mu.Lock()
	for _, sh := range m.shards {
		for sh.idle.len() > 0 && !sh.idle.oldest().lastUsed.After(cutoff) {
			c := sh.idle.oldest()
			m.detach(c)
			old = append(old, c)
		}
	}
	m.mu.Unlock()
	if len(old) > 0 {
		m.closeConns(old)
	}
}

// Close closes every idle connection and those in use as they are
// released; Acquire fails from now on.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	for _, t := range m.tenants {
		m.retire(t)
	}
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	m.bg.Wait()
}

// ShardStats is one shard's counters.
type ShardStats struct {
	Shard    string `json:"shard"`
	Address  string `json:"address"`
	Open     int    `json:"open"`
	Idle     int    `json:"idle"`
	Waiting  int    `json:"waiting"`
	Connects int64  `json:"connects_total"`
	Hits     int64  `json:"hits_total"`
	Steals   int64  `json:"steals_total"`
	Waits    int64  `json:"waits_total"`
	Timeouts int64  `json:"timeouts_total"`
}

// Stats are the manager's counters.
type Stats struct {
	Shards                                          []ShardStats
	Tenants                                         int // tenants holding or awaiting a connection
	Hits, Connects, Steals, Waits, Timeouts, Errors int64
}

// Stats returns a snapshot of the counters.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Stats{Tenants: len(m.tenants), Hits: m.hits.Load(), Connects: m.connects.Load(), Steals: m.steals.Load(),
		Waits: m.waits.Load(), Timeouts: m.timeouts.Load(), Errors: m.errors.Load()}
	for addr, sh := range m.shards {
		s.Shards = append(s.Shards, ShardStats{Shard: sh.name, Address: addr, Open: sh.open, Idle: sh.idle.len(), Waiting: sh.waiting,
			Connects: sh.connects, Hits: sh.hits, Steals: sh.steals, Waits: sh.waits, Timeouts: sh.timeouts})
	}
	return s
}

// idleList is a shard's idle connections, least recently used first: a
// ring of slots with removal by index.
type idleList struct {
	items []*pconn // in release order; nil where removed
	head  int
	n     int
}

func (l *idleList) len() int { return l.n }

func (l *idleList) push(c *pconn) {
	if l.head > 0 && l.head*2 >= len(l.items) {
		l.compact()
	}
	c.idleAt = len(l.items)
	l.items = append(l.items, c)
	l.n++
}

func (l *idleList) oldest() *pconn {
	for l.items[l.head] == nil {
		l.head++
	}
	return l.items[l.head]
}

func (l *idleList) remove(c *pconn) {
	if c.idleAt < 0 {
		return
	}
	l.items[c.idleAt] = nil
	c.idleAt = -1
	l.n--
	if l.n == 0 {
		clear(l.items)
		l.items, l.head = l.items[:0], 0
	}
}

// compact drops the removed slots before head.
func (l *idleList) compact() {
	live := l.items[:0]
	for _, c := range l.items[l.head:] {
		if c != nil {
			c.idleAt = len(live)
			live = append(live, c)
		}
	}
	clear(l.items[len(live):])
	l.items, l.head = live, 0
}
