// Package backup drives pgBackRest for the shards Plinth runs: one stanza
// per shard in an encrypted, compressed repository, continuous WAL
// archiving, full, differential and incremental backups, and the restore
// of a single tenant database of a shard to a point in time into a scratch
// data directory. pgBackRest does the physical work; Plinth writes its
// configuration, keeps its key and runs it as the shard's OS user.
//
// The repository key lives only in the configuration file (mode 0600, owned
// by that user), never on a command line or in a log, so that the server's
// archive_command can read it without it showing up in a process listing.
package backup

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// Config configures pgBackRest for a set of shards.
type Config struct {
	// Home holds the configuration file and pgBackRest's lock and log
	// directories (so that parallel Plinths and tests never share them).
	Home string
	// Repo is the repository directory (PLINTH_HOME/backups under plinth
	// dev), or with S3 the repository's path in the bucket.
	Repo string
	// S3, when set, keeps the repository in an S3-compatible bucket.
	S3 *S3
	// CipherPass is the repository's AES-256 key. Required: an unencrypted
	// repository is not offered.
	CipherPass string
	// RetentionDays keeps full backups (and what depends on them) this many
	// days (30).
	RetentionDays int
	// Bin is the pgbackrest executable (found on PATH when empty).
	Bin string
	// Cred is the OS user the shards' servers run as (nil: this process's).
	Cred *syscall.Credential
}

// S3 is an S3-compatible bucket that holds the repository.
type S3 struct {
	Endpoint string // host[:port], e.g. s3.eu-west-1.amazonaws.com
	Bucket   string
	Region   string
	// URIStyle is host (bucket.endpoint, the default) or path
	// (endpoint/bucket, as MinIO and most others serve).
	URIStyle string
	// Key and KeySecret are the access key; never logged, written only to
	// pgBackRest's configuration file (mode 0600).
	Key, KeySecret string
	// NoVerifyTLS skips checking the endpoint's certificate (a test server).
	NoVerifyTLS bool
}

func (s *S3) check() error {
	switch {
	case s.Endpoint == "" || s.Bucket == "" || s.Region == "":
		return errors.New("backup: an S3 repository needs an endpoint, a bucket and a region")
	case s.Key == "" || s.KeySecret == "":
		return errors.New("backup: an S3 repository needs an access key and its secret")
	case s.URIStyle != "" && s.URIStyle != "host" && s.URIStyle != "path":
		return fmt.Errorf("backup: the S3 URI style is host or path, not %q", s.URIStyle)
	}
	for _, v := range []string{s.Endpoint, s.Bucket, s.Region, s.Key, s.KeySecret} {
		if strings.ContainsAny(v, "\n\r") {
			return errors.New("backup: S3 settings must be one line each")
		}
	}
	return nil
}

// Stanza is one shard as pgBackRest sees it.
type Stanza struct {
	// Name is the shard's name (letters, digits, '-' and '_').
	Name string
	// DataDir is the server's data directory, Port its port, SocketDir
	// the directory of its Unix socket (pgBackRest connects through it).
	DataDir   string
	Port      int
	SocketDir string
	// User and Password log in to the server for backups.
	User, Password string
}

// Type is a kind of backup.
type Type string

// Backup types.
const (
	Full         Type = "full"
	Differential Type = "diff"
	Incremental  Type = "incr"
)

// RetentionDaysDefault is how long full backups are kept.
const RetentionDaysDefault = 30

// ArchiveTimeout bounds the RPO of a quiet shard: a WAL segment is switched
// and archived at least this often when anything was written.
const ArchiveTimeout = 5 * time.Second

// PgBackRest runs pgBackRest for its stanzas.
type PgBackRest struct {
	cfg     Config
	stanzas map[string]Stanza
}

var stanzaName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// New checks cfg and the stanzas and writes pgBackRest's configuration.
func New(cfg Config, stanzas ...Stanza) (*PgBackRest, error) {
	switch {
	case cfg.Home == "" || (cfg.Repo == "" && cfg.S3 == nil):
		return nil, errors.New("backup: Home and Repo are required")
	case len(cfg.CipherPass) < 32:
		return nil, errors.New("backup: the repository key must have at least 32 characters")
	case strings.ContainsAny(cfg.CipherPass, "\n\r"):
		return nil, errors.New("backup: the repository key must be one line")
	case cfg.RetentionDays < 0 || cfg.RetentionDays > 3650:
		return nil, errors.New("backup: retention must be 1 to 3650 days")
	}
	if cfg.S3 != nil {
		if err := cfg.S3.check(); err != nil {
			return nil, err
		}
		cfg.Repo = cmp.Or(cfg.Repo, "/plinth")
	}
	cfg.RetentionDays = cmp.Or(cfg.RetentionDays, RetentionDaysDefault)
	if cfg.Bin == "" {
		bin, err := exec.LookPath("pgbackrest")
		if err != nil {
			return nil, errors.New("backup: pgbackrest is not installed (Debian/Ubuntu: apt install pgbackrest)")
		}
		cfg.Bin = bin
	}
	p := &PgBackRest{cfg: cfg, stanzas: map[string]Stanza{}}
	for _, s := range stanzas {
		if !stanzaName.MatchString(s.Name) {
			return nil, fmt.Errorf("backup: %q is not a usable stanza name", s.Name)
		}
		if !filepath.IsAbs(s.DataDir) || !filepath.IsAbs(s.SocketDir) || s.Port < 1 || s.Port > 65535 {
			return nil, fmt.Errorf("backup: stanza %s needs an absolute data directory and socket directory, and a port", s.Name)
		}
		p.stanzas[s.Name] = s
	}
	return p, p.writeConfig()
}

// ConfigPath is pgBackRest's configuration file.
func (p *PgBackRest) ConfigPath() string { return filepath.Join(p.cfg.Home, "pgbackrest.conf") }

func (p *PgBackRest) writeConfig() error {
	dirs := []string{p.cfg.Home, filepath.Join(p.cfg.Home, "lock"), filepath.Join(p.cfg.Home, "log")}
	if p.cfg.S3 == nil {
		dirs = append(dirs, p.cfg.Repo)
	}
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
		if err := p.chown(dir); err != nil {
			return err
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by Plinth; edit the code, not this file.\n[global]\n")
	if s3 := p.cfg.S3; s3 != nil {
		for _, kv := range [][2]string{
			{"repo1-type", "s3"},
			{"repo1-s3-endpoint", s3.Endpoint},
			{"repo1-s3-bucket", s3.Bucket},
			{"repo1-s3-region", s3.Region},
			{"repo1-s3-uri-style", cmp.Or(s3.URIStyle, "host")},
			{"repo1-s3-key", s3.Key},
			{"repo1-s3-key-secret", s3.KeySecret},
			{"repo1-storage-verify-tls", map[bool]string{false: "y", true: "n"}[s3.NoVerifyTLS]},
		} {
			fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
		}
	}
	for _, kv := range [][2]string{
		{"repo1-path", p.cfg.Repo},
		{"repo1-cipher-type", "aes-256-cbc"},
		{"repo1-cipher-pass", p.cfg.CipherPass},
		{"repo1-retention-full-type", "time"},
		{"repo1-retention-full", strconv.Itoa(p.cfg.RetentionDays)},
		{"compress-type", "zst"},
		{"lock-path", filepath.Join(p.cfg.Home, "lock")},
		{"log-path", filepath.Join(p.cfg.Home, "log")},
		{"log-level-console", "warn"},
		{"log-level-stderr", "warn"},
		{"log-level-file", "off"},
		{"start-fast", "y"},
		{"process-max", "2"},
	} {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	for _, n := range p.Stanzas() {
		s := p.stanzas[n]
		fmt.Fprintf(&b, "\n[%s]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\npg1-user=%s\n",
			s.Name, s.DataDir, s.Port, s.SocketDir, cmp.Or(s.User, "postgres"))
	}
	path := p.ConfigPath()
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("backup: write %s: %w", path, err)
	}
	return p.chown(path)
}

func (p *PgBackRest) chown(path string) error {
	if p.cfg.Cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cfg.Cred.Uid), int(p.cfg.Cred.Gid)); err != nil {
		return fmt.Errorf("backup: chown %s: %w", path, err)
	}
	return nil
}

// ArchiveSettings are the server settings that archive a stanza's WAL
// continuously into the repository. The server's wal_level must be replica
// (Postgres's default) or logical.
func (p *PgBackRest) ArchiveSettings(stanza string) map[string]string {
	return map[string]string{
		"archive_mode":    "on",
		"archive_command": fmt.Sprintf("'%s --config=%s --stanza=%s archive-push %%p'", p.cfg.Bin, p.ConfigPath(), stanza),
		"archive_timeout": strconv.Itoa(int(ArchiveTimeout.Seconds())),
	}
}

// Create creates the stanza in the repository (again is harmless) and
// checks that WAL reaches it.
func (p *PgBackRest) Create(ctx context.Context, stanza string) error {
	if _, err := p.run(ctx, stanza, "stanza-create"); err != nil {
		return err
	}
	return p.Check(ctx, stanza)
}

// ErrBusy is returned while another backup of the stanza runs.
var ErrBusy = errors.New("a backup of this shard is running")

// Stanzas returns the stanzas' names, in order.
func (p *PgBackRest) Stanzas() []string {
	names := make([]string, 0, len(p.stanzas))
	for n := range p.stanzas {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// List returns every stanza's info, in name order; a stanza whose
// repository cannot be read is listed with pgBackRest's status.
func (p *PgBackRest) List(ctx context.Context) ([]Info, error) {
	var out []Info
	for _, n := range p.Stanzas() {
		in, err := p.info(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// Check makes the server switch to a new WAL segment and waits until it is
// in the repository: everything committed before the call is then safe.
func (p *PgBackRest) Check(ctx context.Context, stanza string) error {
	_, err := p.run(ctx, stanza, "check")
	return err
}

// Backup takes a backup of the stanza and expires what retention no longer
// keeps.
func (p *PgBackRest) Backup(ctx context.Context, stanza string, typ Type) error {
	switch typ {
	case Full, Differential, Incremental:
	default:
		return fmt.Errorf("backup: unknown backup type %q (full, diff or incr)", typ)
	}
	_, err := p.run(ctx, stanza, "backup", "--type="+string(typ))
	return err
}

// Verify reads every file of the stanza's backups and archived WAL in the
// repository and checks it against its recorded checksum (pgbackrest
// verify): a repository that lost or corrupted a file fails, naming it.
func (p *PgBackRest) Verify(ctx context.Context, stanza string) error {
	if _, err := p.Info(ctx, stanza); err != nil {
		return err
	}
	// pgBackRest 2.45 exits 0 whatever it finds: the report says.
	out, err := p.run(ctx, stanza, "verify", "--log-level-console=info", "--output=text", "--verbose")
	if err == nil {
		err = ParseVerify(string(out))
	}
	if err != nil {
		return fmt.Errorf("backup: the repository of %s failed verification: %w", stanza, err)
	}
	return nil
}

// ParseVerify reads what `pgbackrest verify --output=text` printed (with
// its info log lines) and fails unless every stanza's status is ok, naming
// the bad files and backups.
func ParseVerify(out string) error {
	var problems []string
	ok := false
	for _, line := range strings.Split(out, "\n") {
		_, logged, isLog := strings.Cut(line, " INFO: ")
		text := strings.TrimSpace(line)
		switch {
		case isLog && (strings.HasPrefix(logged, "invalid ") || strings.HasPrefix(logged, "missing ") ||
			strings.HasPrefix(logged, "unable ") || strings.HasPrefix(logged, "no ")):
			problems = append(problems, logged)
		case isLog:
		case text == "status: ok":
			ok = true
		case strings.HasPrefix(text, "status: "):
			problems = append(problems, text)
		case strings.HasPrefix(text, "backup: ") && !strings.Contains(text, "status: valid"):
			problems = append(problems, text)
		}
	}
	slices.Sort(problems)
	problems = slices.Compact(problems) // the log repeats the report
	if len(problems) > 0 {
		if len(problems) > 10 {
			problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
		}
		return errors.New(strings.Join(problems, "; "))
	}
	if !ok {
		return errors.New("pgbackrest verify printed no status")
	}
	return nil
}

// Info describes the stanza's backups and archive. A repository that
// cannot be read (a wrong key, corruption, a missing stanza) is an error.
func (p *PgBackRest) Info(ctx context.Context, stanza string) (Info, error) {
	in, err := p.info(ctx, stanza)
	if err != nil {
		return Info{}, err
	}
	return in, in.Unreadable()
}

func (p *PgBackRest) info(ctx context.Context, stanza string) (Info, error) {
	out, err := p.run(ctx, stanza, "info", "--output=json")
	if err != nil {
		return Info{}, err
	}
	infos, err := ParseInfo(out)
	if err != nil {
		return Info{}, err
	}
	for _, in := range infos {
		if in.Name == stanza {
			return in, nil
		}
	}
	return Info{}, fmt.Errorf("backup: pgbackrest info has no stanza %s", stanza)
}

// RestoreDatabases restores only databases dbs of the stanza (with the
// cluster's system databases; every database when dbs is empty) into
// dataDir, an empty directory, set to replay WAL to target and then
// promote, with archiving off so the copy never pushes into the repository.
// Starting a server on dataDir (on a port of its own) performs the replay.
func (p *PgBackRest) RestoreDatabases(ctx context.Context, stanza string, dbs []string, dataDir string, target time.Time) error {
	args := []string{"--pg1-path=" + dataDir}
	for _, db := range dbs {
		if db == "" || strings.ContainsAny(db, " \t\n'\"\\") {
			return fmt.Errorf("backup: %q is not a database name to restore", db)
		}
		args = append(args, "--db-include="+db)
	}
	// The parent must be enterable by the shards' OS user; the directory
	// itself is theirs alone, as Postgres insists.
	if err := os.MkdirAll(filepath.Dir(dataDir), 0o755); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("backup: %w", err)
	}
	if err := p.chown(dataDir); err != nil {
		return err
	}
	args = append(args, "--type=time", "--target="+target.UTC().Format("2006-01-02 15:04:05.999999+00"),
		"--target-action=promote", "--archive-mode=off")
	_, err := p.run(ctx, stanza, "restore", args...)
	return err
}

// ErrNoBackupBefore means no backup of the stanza ended before a restore's
// target time, so nothing can be restored to it.
var ErrNoBackupBefore = errors.New("no backup ends before the target time")

// CheckTarget checks that the stanza has a backup that ended before target
// (pgBackRest records stop times in whole seconds, so one ending in the
// same second does not count).
func (p *PgBackRest) CheckTarget(ctx context.Context, stanza string, target time.Time) error {
	in, err := p.Info(ctx, stanza)
	if err != nil {
		return err
	}
	for _, b := range in.Backups {
		if b.Stop.Add(time.Second).Before(target) {
			return nil
		}
	}
	if len(in.Backups) == 0 {
		return fmt.Errorf("shard %s has no backup yet: %w", stanza, ErrNoBackupBefore)
	}
	return fmt.Errorf("the oldest backup of shard %s ended at %s, after %s: %w", stanza,
		in.Backups[0].Stop.UTC().Format(time.RFC3339), target.UTC().Format(time.RFC3339), ErrNoBackupBefore)
}

// Scratch restores databases dbs of the stanza as they were at target into
// a scratch server in dir (emptied first: an earlier attempt may have left
// one, even running), starts it on a free port and waits until it has
// replayed WAL to the target and promoted. The server has the stanza's
// roles and password; the caller stops it and removes dir. It returns how
// long the restore and the replay took.
func (p *PgBackRest) Scratch(ctx context.Context, stanza string, dbs []string, target time.Time, dir string) (*localpg.Cluster, [2]time.Duration, error) {
	var took [2]time.Duration
	s, ok := p.stanzas[stanza]
	if !ok {
		return nil, took, fmt.Errorf("backup: shard %s is not backed up here", stanza)
	}
	c := &localpg.Cluster{Dir: dir, Password: s.Password, Settings: map[string]string{"archive_mode": "off"}}
	if err := DiscardScratch(ctx, dir); err != nil {
		return nil, took, err
	}
	// Replay stops at the first commit after the target; on a quiet shard
	// there may be none yet, so write one, then wait until everything up to
	// it is in the repository.
	if err := commitMark(ctx, s); err != nil {
		return nil, took, err
	}
	if err := p.Check(ctx, stanza); err != nil {
		return nil, took, err
	}
	took, err := p.restoreAndReplay(ctx, stanza, dbs, target, c)
	if err != nil && len(dbs) > 0 && (strings.Contains(err.Error(), "database to include") ||
		strings.Contains(err.Error(), "invalid pages")) {
		// A database created after the backup is only in the WAL, and the
		// replay of a partial restore can reach pages of a database left
		// out ("WAL contains references to invalid pages"): restore the
		// whole cluster, and the replay brings everything back.
		_ = c.Stop(context.WithoutCancel(ctx))
		if err = DiscardScratch(ctx, dir); err == nil {
			took, err = p.restoreAndReplay(ctx, stanza, nil, target, c)
		}
	}
	if err != nil {
		_ = c.Stop(context.WithoutCancel(ctx))
		return nil, took, err
	}
	return c, took, nil
}

// restoreAndReplay restores dbs (all when empty) of the stanza into c's
// data directory, then starts c and waits until it has replayed to the
// target and promoted, or failed.
func (p *PgBackRest) restoreAndReplay(ctx context.Context, stanza string, dbs []string, target time.Time, c *localpg.Cluster) ([2]time.Duration, error) {
	var took [2]time.Duration
	began := time.Now()
	if err := p.RestoreDatabases(ctx, stanza, dbs, c.DataDir(), target); err != nil {
		return took, err
	}
	took[0] = time.Since(began)
	// Recovery needs connection and worker limits no lower than the
	// shard's; recoveryLimits reads them from the restored control file.
	if err := recoveryLimits(ctx, c); err != nil {
		return took, err
	}
	began = time.Now()
	port, err := localpg.FreePort()
	if err != nil {
		return took, err
	}
	c.Port = port
	if _, err := c.Start(ctx); err != nil {
		return took, fmt.Errorf("%w: %s", err, serverFailure(c.LogPath()))
	}
	for {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			var recovering bool
			err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovering)
			conn.Close(context.WithoutCancel(ctx))
			if err == nil && !recovering {
				break
			}
		}
		if failure := serverFailure(c.LogPath()); strings.Contains(failure, "PANIC") {
			return took, fmt.Errorf("backup: the scratch copy of %s failed to replay: %s", stanza, failure)
		}
		select {
		case <-ctx.Done():
			return took, fmt.Errorf("backup: the scratch copy of %s did not finish replaying: %w", stanza, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	took[1] = time.Since(began)
	return took, nil
}

// DiscardScratch stops a scratch server in dir, if one runs, and removes dir.
func DiscardScratch(ctx context.Context, dir string) error {
	c := &localpg.Cluster{Dir: dir}
	if c.Initialized() {
		if err := c.Stop(ctx); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("backup: remove scratch %s: %w", dir, err)
	}
	return nil
}

// run runs a pgBackRest command for a stanza as the shards' OS user. Its
// output never holds the repository key (it is in the configuration file).
func (p *PgBackRest) run(ctx context.Context, stanza, command string, args ...string) ([]byte, error) {
	s, ok := p.stanzas[stanza]
	if !ok {
		return nil, fmt.Errorf("backup: no stanza %q", stanza)
	}
	argv := append([]string{"--config=" + p.ConfigPath(), "--stanza=" + stanza}, args...)
	argv = append(argv, command)
	cmd := exec.CommandContext(ctx, p.cfg.Bin, argv...)
	cmd.Dir = p.cfg.Home
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "PGPASSWORD=" + s.Password}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cfg.Cred, Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if strings.Contains(msg, "ERROR: [050]") { // unable to acquire lock
			return nil, fmt.Errorf("pgbackrest %s for %s: %w", command, stanza, ErrBusy)
		}
		return nil, fmt.Errorf("pgbackrest %s for %s: %w: %s", command, stanza, err, lastLines(msg, 3))
	}
	return stdout.Bytes(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// serverFailure is what a server that would not start said about it: the
// FATAL and PANIC lines of its log.
func serverFailure(logPath string) string {
	b, _ := os.ReadFile(logPath)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "FATAL") || strings.Contains(l, "PANIC") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return lastLines(strings.Join(out, "\n"), 3)
}

// recoveryLimits sets the scratch server's limits that recovery requires
// to be no lower than the primary's, read from the restored control file.
func recoveryLimits(ctx context.Context, c *localpg.Cluster) error {
	bin, err := localpg.FindBinDir()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_controldata"), c.DataDir()).Output()
	if err != nil {
		return fmt.Errorf("backup: read the restored control file: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		name, value, ok := strings.Cut(l, " setting:")
		value = strings.TrimSpace(value)
		switch name = strings.TrimSpace(name); {
		case !ok:
		case name == "max_prepared_xacts":
			c.Settings["max_prepared_transactions"] = value
		case name == "max_locks_per_xact":
			c.Settings["max_locks_per_transaction"] = value
		case name == "max_connections", name == "max_worker_processes", name == "max_wal_senders":
			c.Settings[name] = value
		}
	}
	return nil
}

// commitMark commits a transaction on the stanza's server that writes a
// commit record (it takes a transaction ID), so that WAL holds a commit
// after any target up to now.
func commitMark(ctx context.Context, s Stanza) error {
	conn, err := connect(ctx, s)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		return fmt.Errorf("backup: mark the WAL of shard %s: %w", s.Name, err)
	}
	return nil
}

// connect opens a connection to the stanza's server.
func connect(ctx context.Context, s Stanza) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres sslmode=disable connect_timeout=10", s.Port))
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password = cmp.Or(s.User, "postgres"), s.Password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("backup: connect to shard %s: %w", s.Name, err)
	}
	return conn, nil
}

// Archive is how the stanza's server is archiving its WAL, from
// pg_stat_archiver: the server's clock, not the repository's.
type Archive struct {
	LastArchived *time.Time `json:"last_archived_at"`
	LastFailed   *time.Time `json:"last_failed_at"`
	Failed       int64      `json:"failed_count"` // since the server's statistics were reset
	Now          time.Time  `json:"checked_at"`
}

// Archive reads the stanza server's archiver statistics.
func (p *PgBackRest) Archive(ctx context.Context, stanza string) (Archive, error) {
	s, ok := p.stanzas[stanza]
	if !ok {
		return Archive{}, fmt.Errorf("backup: no stanza %q", stanza)
	}
	conn, err := connect(ctx, s)
	if err != nil {
		return Archive{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var a Archive
	err = conn.QueryRow(ctx, `SELECT last_archived_time, last_failed_time, failed_count, now() FROM pg_stat_archiver`).
		Scan(&a.LastArchived, &a.LastFailed, &a.Failed, &a.Now)
	if err != nil {
		return Archive{}, fmt.Errorf("backup: archiver of shard %s: %w", stanza, err)
	}
	return a, nil
}
