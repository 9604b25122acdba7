package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/tenantdb"
)

// Defaults of `plinth bench restore`.
const (
	RestoreBigMBDefault = 1024
	RestoreSmallDefault = 50
)

// RestoreConfig configures `plinth bench restore`.
type RestoreConfig struct {
	// BigMB is the size the big tenant's database is filled to, in MiB
	// (0: RestoreBigMBDefault).
	BigMB int
	// Small is how many small tenants share the big one's shard.
	Small int
	// Mass is how many small tenants the mass run restores across both
	// shards in one request (0 skips it).
	Mass int
	// Concurrency is Plinth's copy concurrency (0: its default).
	Concurrency int
	// Exe is the plinth binary that runs plinth dev.
	Exe string
	// Home is plinth dev's home: an empty or missing directory, kept
	// afterwards; a temporary one, removed afterwards, when empty.
	Home string
	// Progress receives one line per step.
	Progress io.Writer
}

func (c *RestoreConfig) validate() error {
	if c.BigMB == 0 {
		c.BigMB = RestoreBigMBDefault
	}
	switch {
	case c.BigMB < 1 || c.BigMB > 65536:
		return errors.New("--big-mb must be between 1 and 65536")
	case c.Small < 0 || c.Small > 1000:
		return errors.New("--small must be between 0 and 1000")
	case c.Mass < 0 || c.Mass > catalog.MaxRestoreTenants:
		return fmt.Errorf("--mass must be between 0 and %d (one restore request)", catalog.MaxRestoreTenants)
	case c.Concurrency < 0 || c.Concurrency > 32:
		return errors.New("--concurrency must be between 0 (Plinth's default) and 32")
	case c.Exe == "":
		return errors.New("the plinth binary to run is not set")
	}
	if c.Home != "" {
		entries, err := os.ReadDir(c.Home)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--home: %w", err)
		}
		if len(entries) > 0 {
			return fmt.Errorf("--home %s is not empty: the benchmark needs a plinth dev of its own", c.Home)
		}
	}
	return nil
}

// RestoreReport is what `plinth bench restore` measured.
type RestoreReport struct {
	Machine Machine `json:"machine"`
	Shard   string  `json:"shard"`
	BigMB   int     `json:"big_mb"`
	// BigDiskMB is the big tenant's database size; ShardDiskMB all the
	// shard's databases, at the backup.
	BigDiskMB   float64 `json:"big_disk_mb"`
	ShardDiskMB float64 `json:"shard_disk_mb"`
	Small       int     `json:"small"`
	// Setup, not measured against the targets.
	FillSeconds   float64 `json:"fill_seconds"`
	BackupSeconds float64 `json:"full_backup_seconds"`
	// RPO is commit to the commit's WAL segment archived in the repository.
	RPO    Stats        `json:"rpo"`
	Naive  RestoreSteps `json:"naive"`
	Plinth RestoreSteps `json:"plinth"`
	// PlinthOverNaive is (b) total / (a) total.
	PlinthOverNaive float64      `json:"plinth_over_naive"`
	Mass            *MassRestore `json:"mass,omitempty"`
}

// RestoreSteps are one way of restoring the big tenant, in seconds.
type RestoreSteps struct {
	Restore float64 `json:"restore_s"` // pgBackRest into the scratch directory
	Replay  float64 `json:"replay_s"`  // the scratch server's WAL replay to the target
	Copy    float64 `json:"copy_s"`    // pg_dump | pg_restore into the live shard
	Swap    float64 `json:"swap_s"`    // (b) only: the catalog swap
	// Other is the rest of Total: the WAL mark and check before the
	// restore, removing the scratch server, and for (b) the job queue,
	// the target check and polling.
	Other float64 `json:"other_s"`
	Total float64 `json:"total_s"`
	// Correct: the rows written before the target are there, none after.
	Correct bool   `json:"correct"`
	Found   string `json:"found"`
}

// MassRestore is many small tenants restored across the shards at once.
type MassRestore struct {
	Tenants        int                `json:"tenants"`
	PerShard       map[string]int     `json:"per_shard"`
	CreateSeconds  float64            `json:"create_seconds"`
	BackupSeconds  float64            `json:"incr_backup_seconds"`
	State          string             `json:"state"`
	Failed         int                `json:"failed"`
	Seconds        float64            `json:"seconds"`
	ScratchSeconds map[string]float64 `json:"scratch_restore_and_replay_seconds"`
	Copy           Stats              `json:"copy"`
}

// Targets of the issue.
const (
	restoreBigTarget  = 60 * time.Second
	restoreMassTarget = 10 * time.Minute
	rpoTarget         = 10 * time.Second
	massTargetTenants = 400
)

const (
	bigSlug   = "big"
	naiveDB   = "bench_naive"
	markRows  = 100
	rpoProbes = 5
)

// Restore runs the restore benchmark against a plinth dev of its own (a
// control cluster and two shards archiving WAL into an encrypted pgBackRest
// repository): (a) the naive path, the whole shard restored into a scratch
// server, replayed, and the tenant dumped and loaded into the live shard,
// and (b) Plinth's per-tenant restore from the API call to the tenant
// active; then, with Mass, many small tenants across both shards in one
// request. It also measures the RPO.
func Restore(ctx context.Context, cfg RestoreConfig) (_ *RestoreReport, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	say := progressf(cfg.Progress)
	d, err := startDev(ctx, cfg.Exe, cfg.Home, say)
	if err != nil {
		return nil, err
	}
	defer d.stop(say)
	c := d.client
	rep := &RestoreReport{BigMB: cfg.BigMB, Small: cfg.Small}

	// One shard holds the measured tenants: the other takes no placements
	// until the mass run.
	other := d.state.Shards[1].Name
	if _, err := c.DrainShard(ctx, other, true, "bench restore: one shard holds the measured tenants"); err != nil {
		return nil, err
	}
	say("creating the big tenant and %d small ones…", cfg.Small)
	if _, err := provisionOne(ctx, c, bigSlug); err != nil {
		return nil, err
	}
	if _, err := provisionMany(ctx, c, "small", cfg.Small); err != nil {
		return nil, err
	}
	big, err := c.GetTenant(ctx, bigSlug)
	if err != nil {
		return nil, err
	}
	inst := big.Installations[0]
	rep.Shard = inst.Shard
	bigDSN := d.dsn(inst.Shard, inst.Database)
	adminDSN := d.dsn(inst.Shard, "postgres")
	if rep.Machine, err = machineOf(ctx, adminDSN); err != nil {
		return nil, err
	}

	say("filling %s's database to %d MiB…", bigSlug, cfg.BigMB)
	began := time.Now()
	if rep.BigDiskMB, err = fill(ctx, bigDSN, cfg.BigMB); err != nil {
		return nil, err
	}
	rep.FillSeconds = time.Since(began).Seconds()
	if err := waitArchived(ctx, adminDSN); err != nil {
		return nil, err
	}
	say("taking a full backup of %s…", inst.Shard)
	began = time.Now()
	if _, err := c.RunBackup(ctx, api.BackupRequest{Shard: inst.Shard, Type: string(backup.Full)}); err != nil {
		return nil, fmt.Errorf("full backup of %s: %w", inst.Shard, err)
	}
	rep.BackupSeconds = time.Since(began).Seconds()
	if rep.ShardDiskMB, err = shardDiskMB(ctx, adminDSN); err != nil {
		return nil, err
	}

	// pgBackRest keeps stop times in whole seconds: a target needs a backup
	// that ended more than a second before it.
	time.Sleep(1500 * time.Millisecond)
	target, err := writeMarks(ctx, bigDSN)
	if err != nil {
		return nil, err
	}
	say("measuring the RPO (%d commits, each until its WAL is in the repository)…", rpoProbes)
	if rep.RPO, err = measureRPO(ctx, bigDSN, rpoProbes); err != nil {
		return nil, err
	}

	say("(a) naive: the whole shard into a scratch server, replay, pg_dump | pg_restore…")
	if rep.Naive, err = naiveRestore(ctx, d, inst.Shard, inst.Database, target); err != nil {
		return nil, fmt.Errorf("(a) naive restore: %w", err)
	}
	if err := waitArchived(ctx, adminDSN); err != nil { // (a)'s load is WAL too
		return nil, err
	}
	say("(b) Plinth: POST /v1/restores for %s, until it is active…", bigSlug)
	if rep.Plinth, err = plinthRestore(ctx, d, target, cfg.Concurrency); err != nil {
		return nil, fmt.Errorf("(b) Plinth restore: %w", err)
	}
	rep.PlinthOverNaive = rep.Plinth.Total / rep.Naive.Total

	if cfg.Mass > 0 {
		if _, err := c.DrainShard(ctx, other, false, ""); err != nil {
			return nil, err
		}
		if rep.Mass, err = massRestore(ctx, d, cfg.Mass, cfg.Concurrency, say); err != nil {
			return nil, fmt.Errorf("mass restore: %w", err)
		}
	}
	return rep, nil
}

// dev is a plinth dev subprocess with a home of its own.
type dev struct {
	home   string
	temp   bool
	proc   *exec.Cmd
	state  devstack.State
	client *api.Client
}

func startDev(ctx context.Context, exe, home string, say func(string, ...any)) (_ *dev, err error) {
	d := &dev{home: home}
	if home == "" {
		if d.home, err = os.MkdirTemp("", "plinth-bench-restore-"); err != nil {
			return nil, err
		}
		d.temp = true
	} else if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.stop(say)
		}
	}()
	// The shards' OS user enters the home.
	if err := os.Chmod(d.home, 0o755); err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(d.home, "bench-dev.out"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	say("starting plinth dev (2 shards) in %s…", d.home)
	d.proc = exec.Command(exe, "dev", "--home", d.home, "--listen", "127.0.0.1:0", "--edge-listen", "127.0.0.1:0",
		"--shards", "2", "--warm-pool", "2")
	d.proc.Env = append(os.Environ(), "PLINTH_HOME="+d.home, "PLINTH_DATABASE_URL=")
	d.proc.Stdout, d.proc.Stderr = out, out
	if err := d.proc.Start(); err != nil {
		return nil, fmt.Errorf("start %s dev: %w", exe, err)
	}
	if err := poll(ctx, 3*time.Minute, "plinth dev to be ready", func() (bool, error) {
		b, err := os.ReadFile(out.Name())
		return strings.Contains(string(b), "Plinth is running"), err
	}); err != nil {
		b, _ := os.ReadFile(out.Name())
		return nil, fmt.Errorf("%w: %s", err, lastLines(string(b), 5))
	}
	if d.state, err = devstack.ReadState(d.home); err != nil {
		return nil, err
	}
	token, err := devstack.ReadToken(d.home)
	if err != nil {
		return nil, err
	}
	d.client = api.NewClient(d.state.APIURL, token)
	d.client.HTTP.Timeout = 15 * time.Minute // a full backup of a big shard answers when it is done
	say("waiting for the first backups…")
	err = poll(ctx, 3*time.Minute, "the first backups", func() (bool, error) {
		infos, err := d.client.ListBackups(ctx)
		if err != nil {
			return false, nil // still being set up
		}
		for _, in := range infos {
			if len(in.Backups) == 0 {
				return false, nil
			}
		}
		return len(infos) > 0, nil
	})
	return d, err
}

// stop stops plinth dev and the clusters it started, and removes a
// temporary home.
func (d *dev) stop(say func(string, ...any)) {
	if d.proc != nil && d.proc.Process != nil {
		_ = d.proc.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = d.proc.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = d.proc.Process.Kill()
			<-done
		}
	}
	devstack.StopClusters(d.home)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Scratch servers left by a restore cut short: (a)'s, and Plinth's.
	scratches, _ := filepath.Glob(filepath.Join(d.home, "restore", "*"))
	for _, dir := range append(scratches, naiveScratch(d.home)) {
		if err := backup.DiscardScratch(ctx, dir); err != nil {
			say("could not stop the scratch server in %s: %v", dir, err)
		}
	}
	if d.temp {
		if err := os.RemoveAll(d.home); err != nil {
			say("could not remove %s: %v", d.home, err)
		}
	}
}

func naiveScratch(home string) string { return filepath.Join(home, "bench-naive") }

// dsn connects to database db of the local shard as the superuser.
func (d *dev) dsn(shard, db string) string {
	for _, s := range d.state.Shards {
		if s.Name == shard {
			return (&localpg.Cluster{Port: s.Port, Password: d.state.Password}).DSN(db)
		}
	}
	return ""
}

func machineOf(ctx context.Context, dsn string) (Machine, error) {
	var v string
	err := queryRow(ctx, dsn, "SHOW server_version", nil, &v)
	return machine(v), err
}

// provisionMany creates n tenants prefix-0001… four at a time.
func provisionMany(ctx context.Context, c *api.Client, prefix string, n int) ([]string, error) {
	slugs := make([]string, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range slugs {
		slugs[i] = fmt.Sprintf("%s-%04d", prefix, i+1)
		g.Go(func() error {
			_, err := provisionOne(gctx, c, slugs[i])
			return err
		})
	}
	return slugs, g.Wait()
}

// fill creates bench_fill in the database and inserts wide rows (256
// characters of md5 hex, which compresses about as well as real text) two
// at a time until the database is about mb MiB; it returns its size.
func fill(ctx context.Context, dsn string, mb int) (float64, error) {
	const rowBytes = 330 // heap tuple, line pointer and primary key entry
	const chunk = 200_000
	rows := int64(mb) << 20 / rowBytes
	if err := exec1(ctx, dsn, `CREATE TABLE bench_fill (id bigint PRIMARY KEY, payload text NOT NULL)`); err != nil {
		return 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for lo := int64(1); lo <= rows; lo += chunk {
		hi := min(lo+chunk-1, rows)
		g.Go(func() error {
			return exec1(gctx, dsn, `INSERT INTO bench_fill
				SELECT g, md5(g::text) || md5(g || 'a') || md5(g || 'b') || md5(g || 'c')
				       || md5(g || 'd') || md5(g || 'e') || md5(g || 'f') || md5(g || 'g')
				FROM generate_series($1::bigint, $2::bigint) g`, lo, hi)
		})
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("fill: %w", err)
	}
	var size float64
	err := queryRow(ctx, dsn, `SELECT pg_database_size(current_database()) / 1048576.0`, nil, &size)
	return size, err
}

func shardDiskMB(ctx context.Context, dsn string) (float64, error) {
	var mb float64
	err := queryRow(ctx, dsn, `SELECT sum(pg_database_size(datname)) / 1048576.0 FROM pg_database`, nil, &mb)
	return mb, err
}

// writeMarks commits markRows rows "before", returns a target after them,
// and commits markRows rows "after" it.
func writeMarks(ctx context.Context, dsn string) (time.Time, error) {
	if err := exec1(ctx, dsn, `CREATE TABLE IF NOT EXISTS bench_marks (id int PRIMARY KEY, phase text NOT NULL)`); err != nil {
		return time.Time{}, err
	}
	insert := `INSERT INTO bench_marks SELECT $1::int + g, $2 FROM generate_series(1, $3::int) g`
	if err := exec1(ctx, dsn, insert, 0, "before", markRows); err != nil {
		return time.Time{}, err
	}
	time.Sleep(500 * time.Millisecond)
	target := time.Now()
	time.Sleep(500 * time.Millisecond)
	return target, exec1(ctx, dsn, insert, markRows, "after", markRows)
}

// checkMarks says whether the database holds the rows written before the
// target and none written after.
func checkMarks(ctx context.Context, dsn string) (bool, string, error) {
	var before, after int
	err := queryRow(ctx, dsn, `SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'after') FROM bench_marks`,
		nil, &before, &after)
	found := fmt.Sprintf("%d/%d rows before the target, %d after", before, markRows, after)
	return err == nil && before == markRows && after == 0, found, err
}

// measureRPO commits a row n times and waits each time until the WAL
// segment holding the commit is archived (pg_stat_archiver counts a
// segment once archive_command, pgBackRest's archive-push, has put it in
// the repository).
func measureRPO(ctx context.Context, dsn string, n int) (Stats, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return Stats{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ds := make([]time.Duration, 0, n)
	for i := range n {
		if _, err := conn.Exec(ctx, `INSERT INTO bench_marks VALUES ($1, 'rpo')`, 10_000+i); err != nil {
			return Stats{}, err
		}
		committed := time.Now()
		var segment string
		if err := conn.QueryRow(ctx, `SELECT pg_walfile_name(pg_current_wal_lsn())`).Scan(&segment); err != nil {
			return Stats{}, err
		}
		if err := waitSegment(ctx, conn, segment, time.Minute); err != nil {
			return Stats{}, err
		}
		ds = append(ds, time.Since(committed))
	}
	return Summarise(ds), nil
}

// waitSegment waits until WAL segment is archived (names of one timeline
// sort in WAL order).
func waitSegment(ctx context.Context, conn *pgx.Conn, segment string, limit time.Duration) error {
	return poll(ctx, limit, "WAL segment "+segment+" to be archived", func() (bool, error) {
		var last *string
		err := conn.QueryRow(ctx, `SELECT last_archived_wal FROM pg_stat_archiver`).Scan(&last)
		return err == nil && last != nil && *last >= segment, err
	})
}

// waitArchived waits until everything written so far is archived: a
// backlog left by a big write would otherwise be counted in the next step.
func waitArchived(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var segment string
	// pg_switch_wal ends the segment in use (when anything was written
	// since the last switch); the name of its result is the last
	// segment with WAL in it.
	if err := conn.QueryRow(ctx, `SELECT pg_walfile_name(pg_switch_wal())`).Scan(&segment); err != nil {
		return err
	}
	return waitSegment(ctx, conn, segment, 10*time.Minute)
}

// naiveRestore is (a): pgBackRest restores the whole shard into a scratch
// server that replays WAL to the target, and pg_dump | pg_restore copies
// the tenant's database into a new database on the live shard. It uses
// the same pgBackRest, repository and copy code as Plinth.
func naiveRestore(ctx context.Context, d *dev, shard, db string, target time.Time) (RestoreSteps, error) {
	var s RestoreSteps
	br, err := devstack.OpenBackups(d.home, filepath.Join(d.home, "bench-pgbackrest"))
	if err != nil {
		return s, err
	}
	pool, err := pgxpool.New(ctx, d.dsn(shard, "postgres"))
	if err != nil {
		return s, err
	}
	defer pool.Close()
	live := tenantdb.NewShard(shard, pool)
	dir := naiveScratch(d.home)

	began := time.Now()
	scratch, took, err := br.Scratch(ctx, shard, nil, target, dir)
	if err != nil {
		return s, err
	}
	s.Restore, s.Replay = took[0].Seconds(), took[1].Seconds()
	copyBegan := time.Now()
	src, err := pgx.ParseConfig(scratch.DSN(db))
	if err == nil {
		err = live.CopyFrom(ctx, naiveDB, src)
	}
	if err != nil {
		return s, err
	}
	s.Copy = time.Since(copyBegan).Seconds()
	if err := backup.DiscardScratch(ctx, dir); err != nil {
		return s, err
	}
	s.Total = time.Since(began).Seconds()
	s.Other = s.Total - s.Restore - s.Replay - s.Copy
	if s.Correct, s.Found, err = checkMarks(ctx, d.dsn(shard, naiveDB)); err != nil {
		return s, err
	}
	return s, live.Drop(ctx, naiveDB)
}

// plinthRestore is (b): the big tenant restored to target through the API,
// from the request to the tenant active on its restored database.
func plinthRestore(ctx context.Context, d *dev, target time.Time, concurrency int) (RestoreSteps, error) {
	var s RestoreSteps
	began := time.Now()
	r, err := runRestore(ctx, d.client, []string{bigSlug}, target, concurrency)
	if err != nil {
		return s, err
	}
	var t catalog.Tenant
	if err := poll(ctx, time.Minute, bigSlug+" to be active", func() (bool, error) {
		t, err = d.client.GetTenant(ctx, bigSlug)
		return err == nil && t.State == catalog.StateActive, err
	}); err != nil {
		return s, err
	}
	s.Total = time.Since(began).Seconds()
	if r.State != catalog.RestoreSucceeded {
		return s, fmt.Errorf("restore %s %s: %s", r.ID, r.State, itemErrors(r))
	}
	it := r.Items[0]
	s.Restore, s.Replay, s.Copy, s.Swap = seconds(it.RestoreMS), seconds(it.ReplayMS), seconds(it.CopyMS), seconds(it.SwapMS)
	s.Other = s.Total - s.Restore - s.Replay - s.Copy - s.Swap
	inst := t.Installations[0]
	s.Correct, s.Found, err = checkMarks(ctx, d.dsn(inst.Shard, inst.Database))
	if err == nil && inst.Database != it.RestoredDatabase {
		s.Correct, s.Found = false, fmt.Sprintf("the tenant is on %s, not the restored %s", inst.Database, it.RestoredDatabase)
	}
	return s, err
}

// runRestore asks for a restore of the tenants to target and waits for
// its end.
func runRestore(ctx context.Context, c *api.Client, tenants []string, target time.Time, concurrency int) (catalog.Restore, error) {
	r, err := c.StartRestore(ctx, api.RestoreRequest{Tenants: tenants, To: target.UTC().Format(time.RFC3339Nano), Concurrency: concurrency})
	if err != nil {
		return r, err
	}
	err = poll(ctx, time.Hour, "restore "+r.ID.String()+" to finish", func() (bool, error) {
		r, err = c.GetRestore(ctx, r.ID)
		return err == nil && r.State != catalog.RestoreRunning, err
	})
	return r, err
}

func itemErrors(r catalog.Restore) string {
	var msgs []string
	for _, it := range r.Items {
		if it.Error != "" && len(msgs) < 3 {
			msgs = append(msgs, it.Tenant+": "+it.Error)
		}
	}
	return cmp.Or(r.Error, strings.Join(msgs, "; "))
}

// massRestore creates n small tenants over both shards, backs the shards
// up (incremental) and restores all of them in one request.
func massRestore(ctx context.Context, d *dev, n, concurrency int, say func(string, ...any)) (*MassRestore, error) {
	c := d.client
	m := &MassRestore{Tenants: n, PerShard: map[string]int{}, ScratchSeconds: map[string]float64{}}
	say("mass: creating %d small tenants over both shards…", n)
	began := time.Now()
	slugs, err := provisionMany(ctx, c, "mass", n)
	if err != nil {
		return nil, err
	}
	m.CreateSeconds = time.Since(began).Seconds()
	say("mass: incremental backups of both shards…")
	began = time.Now()
	for _, s := range d.state.Shards {
		if _, err := c.RunBackup(ctx, api.BackupRequest{Shard: s.Name, Type: string(backup.Incremental)}); err != nil {
			return nil, fmt.Errorf("incremental backup of %s: %w", s.Name, err)
		}
	}
	m.BackupSeconds = time.Since(began).Seconds()
	time.Sleep(1500 * time.Millisecond)
	target := time.Now()
	time.Sleep(500 * time.Millisecond)
	say("mass: restoring %d tenants in one request…", n)
	began = time.Now()
	r, err := runRestore(ctx, c, slugs, target, concurrency)
	if err != nil {
		return nil, err
	}
	m.Seconds = time.Since(began).Seconds()
	m.State = r.State
	var copies []time.Duration
	for _, it := range r.Items {
		m.PerShard[it.Shard]++
		if it.State != catalog.ItemSwapped {
			m.Failed++
		}
		if it.RestoreMS != nil && it.ReplayMS != nil {
			m.ScratchSeconds[it.Shard] = seconds(it.RestoreMS) + seconds(it.ReplayMS)
		}
		if it.CopyMS != nil {
			copies = append(copies, time.Duration(*it.CopyMS)*time.Millisecond)
		}
	}
	m.Copy = Summarise(copies)
	if r.State != catalog.RestoreSucceeded || m.Failed > 0 {
		return nil, fmt.Errorf("the restore %s with %d of %d tenants not restored: %s", r.State, m.Failed, len(r.Items), itemErrors(r))
	}
	return m, nil
}

func seconds(ms *int64) float64 {
	if ms == nil {
		return 0
	}
	return float64(*ms) / 1000
}

// poll calls done every 100ms until it says so, fails, or limit passes.
func poll(ctx context.Context, limit time.Duration, what string, done func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := done()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
			return fmt.Errorf("%s did not happen within %s", what, limit)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func exec1(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func queryRow(ctx context.Context, dsn, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], " / ")
}

// PrintRestore writes the report as a table, or as JSON.
func PrintRestore(w io.Writer, r *RestoreReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "\nplinth bench restore: one %d MiB tenant (%.0f MiB on disk) and %d small ones on %s (%.0f MiB of databases), PostgreSQL %s, %d CPUs, %s\n",
		r.BigMB, r.BigDiskMB, r.Small, r.Shard, r.ShardDiskMB, r.Machine.Postgres, r.Machine.CPUs, r.Machine.Go)
	fmt.Fprintf(w, "setup (not measured): fill %.1fs, full backup %.1fs\n\n", r.FillSeconds, r.BackupSeconds)
	a, b := r.Naive, r.Plinth
	fmt.Fprintf(w, "%-52s %10s %10s\n", "step (s)", "(a) naive", "(b) Plinth")
	for _, row := range []struct {
		name string
		a, b float64
	}{
		{"restore from the repository (pgBackRest)", a.Restore, b.Restore},
		{"WAL replay to the target (scratch server)", a.Replay, b.Replay},
		{"pg_dump | pg_restore into the live shard", a.Copy, b.Copy},
		{"swap (catalog transaction, fences)", a.Swap, b.Swap},
		{"other (WAL mark and check, cleanup; (b): queue, polls)", a.Other, b.Other},
		{"total, command to tenant data back", a.Total, b.Total},
	} {
		av := fmt.Sprintf("%.2f", row.a)
		if row.name == "swap (catalog transaction, fences)" {
			av = "-" // the naive path has no catalog
		}
		fmt.Fprintf(w, "%-52s %10s %10.2f\n", row.name, av, row.b)
	}
	fmt.Fprintf(w, "\n(b)/(a): %.2f×\n", r.PlinthOverNaive)
	fmt.Fprintf(w, "correct (rows before the target there, none after): (a) %s (%s); (b) %s (%s)\n",
		yesNo(a.Correct), a.Found, yesNo(b.Correct), b.Found)
	fmt.Fprintf(w, "\ntargets:\n")
	if r.BigMB >= 1024 {
		fmt.Fprintf(w, "  (b) ≤ %s for a 1 GiB tenant: %.1fs  %s\n", restoreBigTarget, b.Total, met(b.Total <= restoreBigTarget.Seconds()))
	} else {
		fmt.Fprintf(w, "  (b) ≤ %s for a 1 GiB tenant: not measured (the big tenant was %d MiB)\n", restoreBigTarget, r.BigMB)
	}
	fmt.Fprintf(w, "  RPO ≤ %s (commit → its WAL segment in the repository): p50 %.1fs, max %.1fs over %d commits  %s\n",
		rpoTarget, r.RPO.P50/1000, r.RPO.Max/1000, r.RPO.N, met(r.RPO.Max <= float64(rpoTarget.Milliseconds())))
	if m := r.Mass; m != nil {
		what := fmt.Sprintf("%d small tenants", m.Tenants)
		verdict := met(m.Seconds <= restoreMassTarget.Seconds() && m.Failed == 0)
		if m.Tenants < massTargetTenants {
			verdict = fmt.Sprintf("(the target is for %d)", massTargetTenants)
		}
		fmt.Fprintf(w, "  %d small tenants across 2 shards ≤ %s: %s in %.1fs, %d not restored  %s\n",
			massTargetTenants, restoreMassTarget, what, m.Seconds, m.Failed, verdict)
		shards := slices.Sorted(maps.Keys(m.PerShard))
		for _, s := range shards {
			fmt.Fprintf(w, "    %s: %d tenants, scratch restore + replay %.1fs\n", s, m.PerShard[s], m.ScratchSeconds[s])
		}
		fmt.Fprintf(w, "    copy per database: p50 %.2fs, max %.2fs; state %s (setup: created in %.1fs, incremental backups %.1fs)\n",
			m.Copy.P50/1000, m.Copy.Max/1000, m.State, m.CreateSeconds, m.BackupSeconds)
	} else {
		fmt.Fprintf(w, "  %d small tenants across 2 shards ≤ %s: not run (--mass %d)\n", massTargetTenants, restoreMassTarget, massTargetTenants)
	}
	fmt.Fprintf(w, "\nreference (a hand-run of the same pgBackRest procedure, from the issue): 11s for 22 MB, 33s for 965 MB\n")
	fmt.Fprintf(w, "WAL replay covers the whole shard since its last backup (here taken just before the target).\n")
	return nil
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
