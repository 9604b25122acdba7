// Package devstack is `plinth dev`: the whole platform on one machine with
// embedded defaults. It creates (or reuses) local Postgres clusters for the
// control database and the shards under PLINTH_HOME, runs the control API and
// a worker, registers the sample product, and keeps the ports and secrets it
// chose so that the next start reuses them in seconds.
//
// One `plinth dev` runs per PLINTH_HOME (a file lock says so clearly).
// Clusters left running by a killed `plinth dev` are adopted on the next
// start; Ctrl-C stops everything and keeps the state.
package devstack

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plinth-platform/plinth/examples/tracker"
	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/domainproof"
	"github.com/plinth-platform/plinth/internal/edge"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
)

//go:embed notes/*.sql
var notesFS embed.FS

// DefaultProduct is the product `plinth dev` gives every new tenant: the
// reference issue tracker (examples/tracker).
const DefaultProduct = tracker.Product

// SampleProduct is the smaller sample product, notes, for tenants created
// with --product notes; its service calls echo through the sidecars.
const SampleProduct = "notes"

// Defaults.
const (
	ListenDefault   = "127.0.0.1:7070"
	ShardsDefault   = 2
	RegionDefault   = "local-1"
	WarmPoolDefault = 2
)

// Config configures `plinth dev`.
type Config struct {
	Home    string
	Shards  int
	Regions []string
	Reset   bool
	Listen  string
	// EdgeListen is where the first region's edge serves tenant traffic.
	EdgeListen string
	// DatabaseURL is an external control database (PLINTH_DATABASE_URL);
	// empty means a local cluster under Home.
	DatabaseURL string
	WarmPool    int
	// Command is how the user runs plinth, for the commands the banner shows.
	Command string
	Out     io.Writer
	// Ready, when set, is called once the stack serves.
	Ready func(State)
}

// Run starts the stack and serves until ctx ends, then stops it and keeps
// its state.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.complete(); err != nil {
		return err
	}
	home, err := filepath.Abs(cfg.Home)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("create PLINTH_HOME %s: %w", home, err)
	}
	unlock, err := lock(home)
	if err != nil {
		return err
	}
	defer unlock()
	if cfg.Reset {
		if err := reset(ctx, home); err != nil {
			return err
		}
		fmt.Fprintf(cfg.Out, "Wiped %s.\n", home)
	}

	logger, closeLog, err := newLogger(home)
	if err != nil {
		return err
	}
	defer closeLog()

	st, err := loadOrInit(home, cfg)
	if err != nil {
		return err
	}
	control, shards := clusters(home, st)
	all := shards
	if control != nil {
		all = append([]*localpg.Cluster{control}, shards...)
	}
	var stanzas []string
	if control != nil {
		stanzas = append(stanzas, "control")
	}
	for _, s := range st.Shards {
		stanzas = append(stanzas, s.Name)
	}
	backups, backupsOff := configureBackups(home, all, stanzas)
	started := time.Now()
	if err := startClusters(ctx, all, cfg.Out); err != nil {
		return err
	}
	defer stopClusters(all)

	dbURL := cfg.DatabaseURL
	if control != nil {
		if err := ensureDatabase(ctx, control, "plinth"); err != nil {
			return err
		}
		dbURL = control.DSN("plinth")
	}
	token, err := readOrCreateToken(home, newToken)
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	srv, err := server.Start(ctx, server.Config{
		DatabaseURL: dbURL, Roles: []server.Role{server.RoleControl, server.RoleWorker},
		Listen: cfg.Listen, AdminToken: token, Logger: logger,
		// A local fleet's domains resolve to this machine.
		Domains: &domainproof.Prover{Resolver: net.DefaultResolver, AllowPrivate: true},
		Provision: provision.Config{JobTimeout: time.Minute, RescueAfter: 70 * time.Second,
			Restorer: restorer(backups), ScratchDir: filepath.Join(home, "restore"), Backups: scheduled(backups)},
		Backups: apiBackups(backups),
	})
	if err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("%w: is another plinth dev running with a different PLINTH_HOME? choose another address with --listen", err)
		}
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = srv.Stop(sctx)
	}()
	if backups != nil {
		go backups.setUp(ctx, logger)
	}
	st.APIURL = "http://" + srv.Addr()
	store := catalog.New(srv.Pool())
	if err := seed(ctx, store, st, shards, cfg.WarmPool); err != nil {
		return err
	}
	creds, err := ensureServices(ctx, store, home)
	if err != nil {
		return fmt.Errorf("register the sample services: %w", err)
	}
	smp, err := startSamples(ctx, store, st.APIURL, creds, st.Password, logger)
	if err != nil {
		return err
	}
	defer smp.stop() // before the server stops: the sidecars deregister through it
	st.Samples = smp.where
	edges, err := startEdges(ctx, store, st, cfg.EdgeListen, st.APIURL, creds["edge"], logger)
	if err != nil {
		return err
	}
	defer stopEdges(edges)
	st.Edges = map[string]string{}
	for _, e := range edges {
		st.Edges[e.Region()] = "http://" + e.Addr()
	}
	st.EdgeURL = "http://" + edges[0].Addr()
	if err := writeState(home, st); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	printBanner(cfg, home, st, token, backupsLine(home, backupsOff), time.Since(started))
	if cfg.Ready != nil {
		cfg.Ready(st)
	}
	<-ctx.Done()
	fmt.Fprintln(cfg.Out, "\nStopping Plinth (state kept in "+home+")…")
	return nil
}

func (c *Config) complete() error {
	if c.Home == "" {
		c.Home = DefaultHome()
	}
	if c.Shards == 0 {
		c.Shards = ShardsDefault
	}
	if c.Shards < 1 || c.Shards > 16 {
		return fmt.Errorf("--shards must be between 1 and 16")
	}
	if len(c.Regions) == 0 {
		c.Regions = []string{RegionDefault}
	}
	for _, r := range c.Regions {
		if err := catalog.ValidateName("region", r); err != nil {
			return fmt.Errorf("--regions: %w", err)
		}
	}
	if c.EdgeListen == "" {
		c.EdgeListen = EdgeListenDefault
	}
	if c.Listen == "" {
		c.Listen = ListenDefault
	}
	if c.WarmPool < 0 || c.WarmPool > 100 {
		return fmt.Errorf("--warm-pool must be between 0 and 100")
	}
	if c.Command == "" {
		c.Command = "plinth"
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return nil
}

// lock takes the PLINTH_HOME lock: one plinth dev per home. The kernel drops
// the lock when the process dies, however it dies.
func lock(home string) (func(), error) {
	path := filepath.Join(home, lockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		f.Close()
		pid := strings.TrimSpace(string(data))
		return nil, fmt.Errorf("plinth dev is already running for %s (pid %s): stop it first, or use another PLINTH_HOME", home, pid)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

// StopClusters stops the Postgres clusters a plinth dev in home started,
// if they are running (after a kill -9, say).
func StopClusters(home string) {
	st, err := ReadState(home)
	if err != nil {
		return
	}
	control, shards := clusters(home, st)
	if control != nil {
		shards = append(shards, control)
	}
	stopClusters(shards)
}

// reset stops the clusters of a previous run and removes everything in home
// but the lock.
func reset(ctx context.Context, home string) error {
	StopClusters(home)
	entries, err := os.ReadDir(home)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(home, e.Name())); err != nil {
			return fmt.Errorf("reset: %w", err)
		}
	}
	return ctx.Err()
}

// loadOrInit reads the state of a previous run, or chooses ports and a
// password for a new one. Shards can be added to an existing home, not removed.
func loadOrInit(home string, cfg Config) (State, error) {
	st, err := ReadState(home)
	if errors.Is(err, os.ErrNotExist) {
		st = State{Version: 1, Password: localpg.RandomPassword()}
		if cfg.DatabaseURL == "" {
			port, err := localpg.FreePort()
			if err != nil {
				return st, err
			}
			st.Control = &ClusterInfo{Name: "control", Port: port}
		}
	} else if err != nil {
		return st, err
	}
	if len(st.Shards) > cfg.Shards {
		return st, fmt.Errorf("%s already has %d shards: --shards can add shards, not remove them (use --reset to start over)", home, len(st.Shards))
	}
	if cfg.DatabaseURL != "" && st.Control != nil {
		return st, fmt.Errorf("%s uses a local control database: unset PLINTH_DATABASE_URL or use --reset", home)
	}
	for i := len(st.Shards); i < cfg.Shards; i++ {
		port, err := localpg.FreePort()
		if err != nil {
			return st, err
		}
		st.Shards = append(st.Shards, ClusterInfo{
			Name: fmt.Sprintf("shard-%d", i+1), Region: cfg.Regions[i%len(cfg.Regions)], Port: port,
		})
	}
	return st, writeState(home, st)
}

// shardSettings make local shards ready for later features: logical
// decoding to move tenants between shards.
var shardSettings = map[string]string{
	"wal_level":             "logical",
	"max_wal_senders":       "10",
	"max_replication_slots": "10",
	"max_connections":       "200",
}

func clusters(home string, st State) (control *localpg.Cluster, shards []*localpg.Cluster) {
	if st.Control != nil {
		control = &localpg.Cluster{Dir: filepath.Join(home, "pg", "control"), Port: st.Control.Port, Password: st.Password,
			Settings: map[string]string{"max_connections": "200"}}
	}
	for _, s := range st.Shards {
		shards = append(shards, &localpg.Cluster{Dir: filepath.Join(home, "pg", s.Name), Port: s.Port,
			Password: st.Password, Settings: shardSettings})
	}
	return control, shards
}

func startClusters(ctx context.Context, cs []*localpg.Cluster, out io.Writer) error {
	if err := os.MkdirAll(filepath.Dir(cs[0].Dir), 0o755); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !c.Initialized() {
				fmt.Fprintf(out, "Creating Postgres cluster %s (port %d)…\n", c.Dir, c.Port)
			}
			if err := c.Init(ctx); err != nil {
				errs[i] = err
				return
			}
			adopted, err := c.Start(ctx)
			if adopted {
				fmt.Fprintf(out, "Adopted Postgres left running in %s (port %d).\n", c.Dir, c.Port)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func stopClusters(cs []*localpg.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Stop(ctx)
		}()
	}
	wg.Wait()
}

// seed registers what plinth dev needs in the catalog (idempotently): the
// regions, the shards, and the sample product as the default with a warm
// pool.
func seed(ctx context.Context, store *catalog.Store, st State, shards []*localpg.Cluster, warmPool int) error {
	regions, err := store.ListRegions(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, r := range regions {
		have[r.Name] = true
	}
	for _, s := range st.Shards {
		if !have[s.Region] {
			if _, err := store.CreateRegion(ctx, catalog.Region{Name: s.Region}); err != nil {
				return fmt.Errorf("add region %s: %w", s.Region, err)
			}
			have[s.Region] = true
		}
	}
	for i, s := range st.Shards {
		if _, err := store.GetShard(ctx, s.Name); catalog.IsCode(err, "shard_not_found") {
			if _, err := store.CreateShard(ctx, catalog.Shard{Name: s.Name, Region: s.Region, DSN: shards[i].DSN("postgres"), Capacity: 5000}); err != nil {
				return fmt.Errorf("add shard %s: %w", s.Name, err)
			}
		} else if err != nil {
			return err
		}
	}
	notes, err := fs.Sub(notesFS, "notes")
	if err != nil {
		return err
	}
	trackerMigrations, err := fs.Sub(tracker.Migrations, "migrations")
	if err != nil {
		return err
	}
	// The tracker is the default product (a tenant created without
	// --product gets it); notes is there for tenants that ask for it.
	for _, p := range []struct {
		name       string
		migrations fs.FS
		isDefault  bool
		warm       int
	}{
		{SampleProduct, notes, false, 0},
		{DefaultProduct, trackerMigrations, true, warmPool},
	} {
		ms, err := catalog.ReadMigrations(p.migrations)
		if err != nil {
			return err
		}
		params := catalog.RegisterProductParams{Name: p.name, Migrations: ms, Default: p.isDefault}
		cur, err := store.GetProduct(ctx, p.name)
		switch {
		case catalog.IsCode(err, "product_not_found"):
			params.WarmPoolSize = &p.warm // only for a new product: keep what the operator set since
		case err != nil:
			return err
		case len(ms) > 0 && cur.CurrentVersion >= ms[len(ms)-1].Version:
			continue // registered before, perhaps with migrations added since: leave it as it is
		}
		if _, _, err := store.RegisterProduct(ctx, params); err != nil {
			return fmt.Errorf("register %s: %w", p.name, err)
		}
	}
	return nil
}

// apiBackups keeps a nil *devBackups from becoming a non-nil interface.
func apiBackups(b *devBackups) api.Backups {
	if b == nil {
		return nil
	}
	return b
}

func backupsLine(home, off string) string {
	if off != "" {
		return off
	}
	return fmt.Sprintf("pgBackRest, encrypted, in %s; WAL archived continuously (`plinth backup list`)", filepath.Join(home, "backups"))
}

func printBanner(cfg Config, home string, st State, token, backups string, took time.Duration) {
	var shards []string
	for _, s := range st.Shards {
		shards = append(shards, fmt.Sprintf("%s (%s) 127.0.0.1:%d", s.Name, s.Region, s.Port))
	}
	control := "PLINTH_DATABASE_URL"
	if st.Control != nil {
		control = fmt.Sprintf("127.0.0.1:%d, database plinth", st.Control.Port)
	}
	_, edgePort, _ := net.SplitHostPort(strings.TrimPrefix(st.EdgeURL, "http://"))
	fmt.Fprintf(cfg.Out, `
Plinth is running (started in %.1fs; state in %s)

  Control API    %s
  OpenAPI        %s/openapi.json
  Admin token    %s
  Control DB     %s
  Shards         %s
  Products       %s (default), %s
  Edge           %s (tenants at <slug>.%s)
  Services       tracker: sidecar http://%s, notes: sidecar http://%s, echo: sidecar http://%s
  Backups        %s
  Logs           %s

Create a first tenant in another terminal (it finds the API and token in %s),
then open its issue tracker through the edge, in a browser or with curl:

  %s tenant create acme --wait
  open http://acme.%s:%s/
  curl -H 'Host: acme.%s' -H 'Content-Type: application/json' %s/api/projects -d '{"key": "WEB", "name": "Website"}'

Press Ctrl-C to stop; the next start reuses everything (--reset wipes it).
`, took.Seconds(), home, st.APIURL, st.APIURL, token, control, strings.Join(shards, ", "),
		DefaultProduct, SampleProduct, st.EdgeURL, edge.BaseDomainDefault,
		st.Samples["tracker"].Ingress, st.Samples["notes"].Ingress, st.Samples["echo"].Ingress, backups,
		filepath.Join(home, logFile), cfg.Home, cfg.Command, edge.BaseDomainDefault, edgePort, edge.BaseDomainDefault, st.EdgeURL)
}

func newToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "plinth_" + base64.RawURLEncoding.EncodeToString(b)
}
