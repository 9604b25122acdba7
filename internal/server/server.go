// Package server runs Plinth's control-plane roles in one process: the
// control API and the worker, sharing one pool on the control database.
// `plinth serve --role …` and `plinth dev` start it; so do the tests and the
// benchmarks.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/domainproof"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/provision"
)

// Role is a part of Plinth a process can run.
type Role string

// Roles.
const (
	RoleControl Role = "control" // the control API
	RoleWorker  Role = "worker"  // provisioning and lifecycle jobs, maintenance
)

// ParseRoles parses a comma-separated list of roles ("all" for every one).
func ParseRoles(s string) ([]Role, error) {
	if s == "all" {
		return []Role{RoleControl, RoleWorker}, nil
	}
	var out []Role
	for _, part := range strings.Split(s, ",") {
		r := Role(strings.TrimSpace(part))
		if r != RoleControl && r != RoleWorker {
			return nil, fmt.Errorf("unknown role %q: use control, worker or all", part)
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Config configures a process.
type Config struct {
	DatabaseURL string
	Roles       []Role
	// Listen is the control API's address (control role).
	Listen     string
	AdminToken string
	Logger     *slog.Logger
	// Provision tunes the worker; Store, Pools and Logger are filled in.
	Provision provision.Config
	// MaxConns caps the control database pool (default 30).
	MaxConns int32
	// Domains checks proofs of custom-domain control (default: DNS TXT
	// through the system resolver, or HTTP to public addresses only).
	Domains api.DomainProver
	// Backups backs up the shards this process runs (nil: none).
	Backups api.Backups
}

// Server is a running process.
type Server struct {
	cfg      Config
	pool     *pgxpool.Pool
	shards   *fleet.Pools
	worker   *river.Client[pgx.Tx]
	http     *http.Server
	listener net.Listener
	stop     context.CancelFunc
	done     chan struct{}
	beating  sync.WaitGroup
}

// Start opens the control database, migrates it, and starts the configured
// roles. Stop it with Stop.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if len(cfg.Roles) == 0 {
		return nil, errors.New("no role to run")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Domains == nil {
		cfg.Domains = &domainproof.Prover{Resolver: net.DefaultResolver}
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, errors.New("the control database URL is not a valid Postgres connection string")
	}
	pcfg.MaxConns = 30
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = "plinth"
	s := &Server{cfg: cfg, shards: fleet.NewPools(), done: make(chan struct{})}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("control database: %w", err)
	}
	defer func() {
		if err != nil {
			s.pool.Close()
		}
	}()
	if err := s.pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("cannot reach the control database: %w", err)
	}
	if err := catalog.Migrate(ctx, s.pool, cfg.Logger); err != nil {
		return nil, err
	}
	if err := provision.Migrate(ctx, s.pool, cfg.Logger); err != nil {
		return nil, err
	}
	store := catalog.New(s.pool)
	pc := cfg.Provision
	pc.Store, pc.Pools, pc.Logger = store, s.shards, cfg.Logger

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	client, err := provision.NewInserter(s.pool, pc)
	if slices.Contains(cfg.Roles, RoleWorker) {
		client, err = provision.NewWorker(s.pool, pc)
		s.worker = client
	}
	if err != nil {
		stop()
		return nil, err
	}
	if s.worker != nil {
		if err := s.worker.Start(runCtx); err != nil {
			stop()
			return nil, fmt.Errorf("start worker: %w", err)
		}
		if pc.Restorer != nil {
			// The shards are backed up: stamp their heartbeats for drills.
			s.beating.Go(func() { provision.Heartbeats(runCtx, pc) })
		}
	}
	if slices.Contains(cfg.Roles, RoleControl) {
		if err := s.startAPI(runCtx, store, provision.NewService(client, pc)); err != nil {
			stop()
			s.stopWorker(context.Background())
			return nil, err
		}
	} else {
		close(s.done)
	}
	return s, nil
}

func (s *Server) startAPI(ctx context.Context, store *catalog.Store, svc *provision.Service) error {
	notifier := catalog.NewNotifier(s.pool, s.cfg.Logger)
	go notifier.Run(ctx)
	handler, err := api.New(api.Config{
		Store: store, Service: svc, AdminToken: s.cfg.AdminToken, Logger: s.cfg.Logger,
		VerifyShard: fleet.Verify, Notifier: notifier, Domains: s.cfg.Domains, Backups: s.cfg.Backups,
	})
	if err != nil {
		return err
	}
	addr := s.cfg.Listen
	if addr == "" {
		addr = "127.0.0.1:7070"
	}
	s.listener, err = net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("control API cannot listen on %s: %w", addr, err)
	}
	s.http = &http.Server{
		Handler:           handler.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	s.http.RegisterOnShutdown(handler.Shutdown)
	go func() {
		defer close(s.done)
		if err := s.http.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("control API stopped", "error", err)
		}
	}()
	return nil
}

// Addr is the control API's address, when the process runs it.
func (s *Server) Addr() string {
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Pool is the control database pool.
func (s *Server) Pool() *pgxpool.Pool { return s.pool }

// Stop drains the API (requests in flight finish), stops the worker (jobs
// in flight get until ctx ends, then are cancelled and retried later), and
// closes the pools.
func (s *Server) Stop(ctx context.Context) error {
	var errs []error
	if s.http != nil {
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop API: %w", err))
		}
		<-s.done
	}
	s.stopWorker(ctx)
	s.stop()
	s.beating.Wait()
	s.shards.Close()
	s.pool.Close()
	return errors.Join(errs...)
}

func (s *Server) stopWorker(ctx context.Context) {
	if s.worker == nil {
		return
	}
	if err := s.worker.Stop(ctx); err != nil {
		// Jobs did not finish in time: cancel them; River retries them later.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.worker.StopAndCancel(cctx)
	}
}
