// Package fleet connects Plinth to its shards: one small admin pool per
// shard, built from the DSN the catalog holds; checks that a new shard is a
// Postgres server Plinth can use; and the health probe that marks shards
// healthy or unhealthy. Placement itself is a catalog query
// (catalog.Store.ReserveDatabase), so that it runs in the transaction that
// records the placement.
package fleet

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Defaults for shard connections.
const (
	AdminMaxConnsDefault  = 4
	ConnectTimeoutDefault = 5 * time.Second
	ProbeTimeoutDefault   = 3 * time.Second
	// UnhealthyAfterDefault is how many consecutive failed probes make a
	// shard unhealthy.
	UnhealthyAfterDefault = 2
	// MinServerVersion is the oldest Postgres a shard may run (14).
	MinServerVersion = 140000
)

// Pools keeps one admin pool per shard. Pools open no connection until used
// and let idle ones go, so an idle fleet holds next to nothing.
type Pools struct {
	mu     sync.Mutex
	shards map[string]poolEntry
}

type poolEntry struct {
	dsn   string
	shard *tenantdb.Shard
}

// NewPools returns an empty set of shard pools.
func NewPools() *Pools {
	return &Pools{shards: map[string]poolEntry{}}
}

// Shard returns the connection to sh, opening its pool on first use and
// reopening it when the catalog's DSN changed.
func (p *Pools) Shard(sh catalog.Shard) (*tenantdb.Shard, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.shards[sh.Name]; ok {
		if e.dsn == sh.DSN {
			return e.shard, nil
		}
		e.shard.Admin.Close()
		delete(p.shards, sh.Name)
	}
	cfg, err := ParseDSN(sh.DSN)
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w", sh.Name, err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w", sh.Name, err)
	}
	s := tenantdb.NewShard(sh.Name, pool)
	p.shards[sh.Name] = poolEntry{dsn: sh.DSN, shard: s}
	return s, nil
}

// Close closes every pool.
func (p *Pools) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, e := range p.shards {
		e.shard.Admin.Close()
		delete(p.shards, name)
	}
}

// ParseDSN parses a shard DSN into the admin pool's configuration.
func ParseDSN(dsn string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, catalog.Invalid("invalid_dsn", "the DSN is not a valid Postgres connection string")
	}
	if cfg.ConnConfig.Host == "" {
		return nil, catalog.Invalid("invalid_dsn", "the DSN must name a host")
	}
	cfg.MaxConns = AdminMaxConnsDefault
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = 30 * time.Second
	cfg.HealthCheckPeriod = 30 * time.Second
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > ConnectTimeoutDefault {
		cfg.ConnConfig.ConnectTimeout = ConnectTimeoutDefault
	}
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "plinth"
	return cfg, nil
}

// RedactDSN returns a DSN without its password, fit for logs and the API.
func RedactDSN(dsn string) string {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return "(invalid)"
	}
	c := cfg.ConnConfig
	u := url.URL{Scheme: "postgres", Host: fmt.Sprintf("%s:%d", c.Host, c.Port), Path: "/" + c.Database}
	if c.User != "" {
		u.User = url.User(c.User)
	}
	return u.String()
}

// Verify checks that dsn reaches a Postgres server Plinth can use as a
// shard: version 14 or newer, and a role that may create databases.
func Verify(ctx context.Context, dsn string) error {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, ConnectTimeoutDefault)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return &catalog.Error{Kind: catalog.KindInvalid, Code: "shard_unreachable",
			Message: "cannot connect to the shard at " + RedactDSN(dsn), Err: err}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var version int
	var canCreate bool
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int,
		(SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&version, &canCreate)
	if err != nil {
		return fmt.Errorf("inspect shard: %w", err)
	}
	if version < MinServerVersion {
		return catalog.Invalid("shard_too_old", "the shard runs Postgres %d; Plinth needs 14 or newer", version/10000)
	}
	if !canCreate {
		return catalog.Invalid("shard_insufficient_privilege", "the shard's role may not create databases (it needs CREATEDB)")
	}
	return nil
}

// Probe checks that a shard answers a query within ProbeTimeoutDefault.
func Probe(ctx context.Context, s *tenantdb.Shard) error {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeoutDefault)
	defer cancel()
	var one int
	if err := s.Admin.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("probe shard %s: %w", s.Name, err)
	}
	return nil
}
