// Package localpg runs local Postgres clusters from the installed server
// binaries (initdb, pg_ctl): create one, start it or adopt it when it is
// already running, stop it. `plinth dev`, the tests and the benchmarks use
// it to make shards and control databases on one machine.
//
// Clusters listen on 127.0.0.1 only, with Unix sockets switched off (no long
// socket paths), and require a password. When Plinth runs as root, the
// clusters run as an unprivileged OS user (initdb refuses root), which must
// be able to reach the cluster's directory.
package localpg

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the name of the superuser role of every local cluster.
const Superuser = "plinth"

// Cluster is one local Postgres server: a data directory and a port.
type Cluster struct {
	// Dir holds the cluster: Dir/data is its data directory and
	// Dir/postgres.log its server log. It is created when missing.
	Dir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Password is the superuser's password, set by Init.
	Password string
	// Settings are extra server settings (postgresql.conf names), written to
	// Dir/data/plinth.conf on every start.
	Settings map[string]string
	// BinDir holds initdb and pg_ctl; FindBinDir when empty.
	BinDir string
	// SocketDir, when set, is where the server also listens on a Unix
	// socket, reachable only by its OS user (pgBackRest connects through
	// one). Keep the path short: a socket path has at most 107 bytes.
	SocketDir string
}

// FindBinDir locates the PostgreSQL server binaries: $PLINTH_PG_BIN, then
// the directory of an initdb on PATH (links followed), then the newest
// /usr/lib/postgresql/<version>/bin (where Debian keeps them off PATH).
func FindBinDir() (string, error) {
	if dir := os.Getenv("PLINTH_PG_BIN"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			return "", fmt.Errorf("PLINTH_PG_BIN=%s has no initdb: %w", dir, err)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// A link on PATH (to /usr/lib/postgresql/15/bin/initdb, say) names
		// the directory that holds the other binaries too.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL 14 or newer " +
		"(Debian/Ubuntu: apt install postgresql) or set PLINTH_PG_BIN to their directory")
}

func versionOf(initdb string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(initdb))), 64)
	return v
}

// OSUser returns the credential to run Postgres with: nil when Plinth is
// not root, otherwise that of $PLINTH_PG_USER or "postgres".
func OSUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := os.Getenv("PLINTH_PG_USER")
	if name == "" {
		name = "postgres"
	}
	c, err := UserCredential(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, so Postgres must run as an unprivileged user, but %w "+
			"(create it or set PLINTH_PG_USER)", err)
	}
	return c, nil
}

// UserCredential is the credential of OS user name.
func UserCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %q was not found: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir() }

// LogPath is the server's log file.
func (c *Cluster) LogPath() string { return filepath.Join(c.Dir, "postgres.log") }

// DSN returns a connection string for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, c.Password, c.Port, db)
}

// Initialized reports whether the cluster's data directory exists.
func (c *Cluster) Initialized() bool {
	_, err := os.Stat(filepath.Join(c.dataDir(), "PG_VERSION"))
	return err == nil
}

// Init creates the cluster with initdb unless it exists. A new cluster gets
// a random superuser password unless c.Password is set.
func (c *Cluster) Init(ctx context.Context) error {
	if c.Initialized() {
		return nil
	}
	if c.Password == "" {
		c.Password = RandomPassword()
	}
	cred, err := OSUser()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("create cluster directory: %w", err)
	}
	if err := chown(c.Dir, cred); err != nil {
		return err
	}
	if err := c.checkReachable(ctx, cred); err != nil {
		return err
	}
	pwfile := filepath.Join(c.Dir, ".pwfile")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	defer os.Remove(pwfile)
	if err := chown(pwfile, cred); err != nil {
		return err
	}
	_ = os.RemoveAll(c.dataDir()) // a half-made data directory from an interrupted initdb
	out, err := c.run(ctx, cred, nil, "initdb", "-D", c.dataDir(), "-U", Superuser, "--pwfile", pwfile,
		"--auth", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions")
	if err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", c.dataDir(), err, out)
	}
	return c.ensureInclude()
}

const includeLine = "include_if_exists = 'plinth.conf'"

// ensureInclude makes postgresql.conf read plinth.conf. It runs on every
// start, so a crash between initdb and this edit is mended next time.
func (c *Cluster) ensureInclude() error {
	path := filepath.Join(c.dataDir(), "postgresql.conf")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read postgresql.conf: %w", err)
	}
	if strings.Contains(string(data), includeLine) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("edit postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n# Settings managed by Plinth.\n" + includeLine + "\n"); err != nil {
		return fmt.Errorf("edit postgresql.conf: %w", err)
	}
	return nil
}

// checkReachable fails with advice when the OS user Postgres runs as cannot
// write to the cluster directory (a parent directory it cannot enter).
func (c *Cluster) checkReachable(ctx context.Context, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `test -w "$1" && test -x "$1"`, "sh", c.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("the OS user Postgres runs as (uid %d) cannot reach %s: make every parent directory "+
			"traversable (chmod o+x) or put PLINTH_HOME somewhere it can reach, such as /tmp", cred.Uid, c.Dir)
	}
	return nil
}

func (c *Cluster) writeConfig(cred *syscall.Credential) error {
	settings := map[string]string{
		"port":                    strconv.Itoa(c.Port),
		"listen_addresses":        "'127.0.0.1'",
		"unix_socket_directories": "''",
	}
	if c.SocketDir != "" {
		if err := os.MkdirAll(c.SocketDir, 0o700); err != nil {
			return fmt.Errorf("create socket directory: %w", err)
		}
		if err := chown(c.SocketDir, cred); err != nil {
			return err
		}
		settings["unix_socket_directories"] = "'" + c.SocketDir + "'"
		settings["unix_socket_permissions"] = "0700"
	}
	for k, v := range c.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by Plinth on every start; edit the code, not this file.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	path := filepath.Join(c.dataDir(), "plinth.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return chown(path, cred)
}

// Running reports whether the cluster's server is running.
func (c *Cluster) Running(ctx context.Context) bool {
	cred, err := OSUser()
	if err != nil || !c.Initialized() {
		return false
	}
	_, err = c.run(ctx, cred, nil, "pg_ctl", "status", "-D", c.dataDir())
	return err == nil
}

// Start starts the server, or adopts it when it is already running (left
// behind by a process that was killed). It reports whether it adopted.
func (c *Cluster) Start(ctx context.Context) (adopted bool, err error) {
	if !c.Initialized() {
		return false, fmt.Errorf("cluster %s is not initialised", c.Dir)
	}
	cred, err := OSUser()
	if err != nil {
		return false, err
	}
	if c.Running(ctx) {
		return true, c.waitReady(ctx)
	}
	if err := c.ensureInclude(); err != nil {
		return false, err
	}
	if err := c.writeConfig(cred); err != nil {
		return false, err
	}
	logf, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return false, fmt.Errorf("open server log: %w", err)
	}
	defer logf.Close()
	if err := chown(c.LogPath(), cred); err != nil {
		return false, err
	}
	// pg_ctl's own output goes to a file, not a pipe: the server it forks
	// would inherit a pipe and keep it open.
	if _, err := c.run(ctx, cred, logf, "pg_ctl", "start", "-D", c.dataDir(), "-l", c.LogPath(), "-w", "-t", "60"); err != nil {
		return false, fmt.Errorf("start postgres in %s (port %d): %w; see %s", c.Dir, c.Port, err, c.LogPath())
	}
	return false, c.waitReady(ctx)
}

// waitReady waits until the server accepts connections with the password.
func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.DSN("postgres"))
		cancel()
		if err == nil {
			return conn.Close(ctx)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("postgres in %s is not accepting connections on port %d: %w", c.Dir, c.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (fast shutdown: sessions are ended, data is safe).
func (c *Cluster) Stop(ctx context.Context) error {
	if !c.Running(ctx) {
		return nil
	}
	cred, err := OSUser()
	if err != nil {
		return err
	}
	if out, err := c.run(ctx, cred, nil, "pg_ctl", "stop", "-D", c.dataDir(), "-m", "fast", "-w", "-t", "60"); err != nil {
		return fmt.Errorf("stop postgres in %s: %w\n%s", c.Dir, err, out)
	}
	return nil
}

// run runs a PostgreSQL binary as cred (nil: as ourselves) in its own
// process group, so that a Ctrl-C meant for Plinth does not reach Postgres
// before Plinth has stopped using it. Output goes to out when given,
// otherwise it is returned.
func (c *Cluster) run(ctx context.Context, cred *syscall.Credential, out *os.File, name string, args ...string) ([]byte, error) {
	if c.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		c.BinDir = dir
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	var buf bytes.Buffer
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	} else {
		cmd.Stdout, cmd.Stderr = &buf, &buf
	}
	err := cmd.Run()
	return buf.Bytes(), err
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// RandomPassword returns a random password safe to put in a URL.
func RandomPassword() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
