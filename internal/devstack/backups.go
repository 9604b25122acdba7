package devstack

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/provision"
)

const backupKeyFile = "backup-key"

// devBackups is the local fleet's pgBackRest, ready once every stanza exists
// and holds a first full backup (set up in the background, so that plinth
// dev starts at once).
type devBackups struct {
	*backup.PgBackRest
	ready chan struct{}
	err   error // why set-up failed, once ready is closed
}

func (d *devBackups) wait(ctx context.Context) error {
	select {
	case <-d.ready:
		return d.err
	case <-ctx.Done():
		return fmt.Errorf("backups are still being set up: %w", ctx.Err())
	}
}

func (d *devBackups) List(ctx context.Context) ([]backup.Info, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	return d.PgBackRest.List(ctx)
}

func (d *devBackups) Info(ctx context.Context, stanza string) (backup.Info, error) {
	if err := d.wait(ctx); err != nil {
		return backup.Info{}, err
	}
	return d.PgBackRest.Info(ctx, stanza)
}

func (d *devBackups) Verify(ctx context.Context, stanza string) error {
	if err := d.wait(ctx); err != nil {
		return err
	}
	return d.PgBackRest.Verify(ctx, stanza)
}

func (d *devBackups) Backup(ctx context.Context, stanza string, typ backup.Type) error {
	if err := d.wait(ctx); err != nil {
		return err
	}
	return d.PgBackRest.Backup(ctx, stanza, typ)
}

// configureBackups sets the clusters up to archive their WAL into an
// encrypted repository in home/backups, when pgbackrest is installed
// (names[i] is cluster i's stanza). It returns nil and why not otherwise.
func configureBackups(home string, cs []*localpg.Cluster, names []string) (*devBackups, string) {
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		return nil, "off (install pgbackrest to have them)"
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return nil, "off: " + err.Error()
	}
	key, err := readOrCreateKey(abs)
	if err != nil {
		return nil, "off: " + err.Error()
	}
	cred, err := localpg.OSUser()
	if err != nil {
		return nil, "off: " + err.Error()
	}
	var stanzas []backup.Stanza
	for i, c := range cs {
		c.SocketDir = socketDir(abs, names[i])
		stanzas = append(stanzas, backup.Stanza{Name: names[i], DataDir: c.DataDir(), Port: c.Port,
			SocketDir: c.SocketDir, User: localpg.Superuser, Password: c.Password})
	}
	br, err := backup.New(backup.Config{Home: filepath.Join(abs, "pgbackrest"), Repo: filepath.Join(abs, "backups"),
		CipherPass: key, Cred: cred}, stanzas...)
	if err != nil {
		return nil, "off: " + err.Error()
	}
	for i, c := range cs {
		settings := maps.Clone(c.Settings)
		if settings == nil {
			settings = map[string]string{}
		}
		maps.Copy(settings, br.ArchiveSettings(names[i]))
		c.Settings = settings
	}
	return &devBackups{PgBackRest: br, ready: make(chan struct{})}, ""
}

// setUp creates the stanzas and takes a first full backup of each that has
// none, then marks the backups ready.
func (d *devBackups) setUp(ctx context.Context, logger *slog.Logger) {
	defer close(d.ready)
	var errs []error
	for _, name := range d.Stanzas() {
		err := d.Create(ctx, name)
		if err == nil {
			var in backup.Info
			if in, err = d.PgBackRest.Info(ctx, name); err == nil && len(in.Backups) == 0 {
				err = d.PgBackRest.Backup(ctx, name, backup.Full)
			}
		}
		if err != nil {
			logger.Error("setting up backups", "stanza", name, "error", err)
			errs = append(errs, err)
		}
	}
	d.err = errors.Join(errs...)
	if d.err == nil {
		logger.Info("backups ready", "stanzas", d.Stanzas())
	}
}

// socketDir is where cluster name's Unix socket lives: in its directory,
// unless that path would be too long for a socket (107 bytes with the
// socket's own name), then in a directory of the system's temporary one.
func socketDir(home, name string) string {
	dir := filepath.Join(home, "pg", name, "sock")
	if len(dir)+len("/.s.PGSQL.65535") <= 100 {
		return dir
	}
	sum := sha256.Sum256([]byte(home))
	return filepath.Join(os.TempDir(), "plinth-"+hex.EncodeToString(sum[:6])+"-"+name)
}

// readOrCreateKey returns the repository key kept in home (0600).
func readOrCreateKey(home string) (string, error) {
	path := filepath.Join(home, backupKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		if k := strings.TrimSpace(string(b)); len(k) >= 32 {
			return k, nil
		}
		return "", fmt.Errorf("%s is not a usable key: restore it from where you keep it", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b := make([]byte, 36)
	_, _ = rand.Read(b)
	k := base64.RawURLEncoding.EncodeToString(b)
	return k, os.WriteFile(path, []byte(k+"\n"), 0o600)
}

func (d *devBackups) CheckTarget(ctx context.Context, stanza string, target time.Time) error {
	if err := d.wait(ctx); err != nil {
		return err
	}
	return d.PgBackRest.CheckTarget(ctx, stanza, target)
}

func (d *devBackups) Scratch(ctx context.Context, stanza string, dbs []string, target time.Time, dir string) (*localpg.Cluster, [2]time.Duration, error) {
	if err := d.wait(ctx); err != nil {
		return nil, [2]time.Duration{}, err
	}
	return d.PgBackRest.Scratch(ctx, stanza, dbs, target, dir)
}

// restorer and scheduled keep a nil *devBackups from becoming a non-nil
// interface.
func restorer(b *devBackups) provision.Restorer {
	if b == nil {
		return nil
	}
	return b
}

func scheduled(b *devBackups) provision.Backups {
	if b == nil {
		return nil
	}
	return b
}

// OpenBackups returns a pgBackRest for the shards of the plinth dev in home:
// the same encrypted repository and key, with its own configuration, lock
// and log directories in dir (so that the running plinth dev's configuration,
// which its servers' archive_command reads, is never rewritten). Benchmarks
// and drills use it to restore by hand what plinth dev backs up.
func OpenBackups(home, dir string) (*backup.PgBackRest, error) {
	abs, err := filepath.Abs(home)
	if err != nil {
		return nil, err
	}
	st, err := ReadState(abs)
	if err != nil {
		return nil, fmt.Errorf("open backups: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(abs, backupKeyFile))
	if err != nil {
		return nil, fmt.Errorf("open backups: %w", err)
	}
	cred, err := localpg.OSUser()
	if err != nil {
		return nil, err
	}
	_, shards := clusters(abs, st)
	var stanzas []backup.Stanza
	for i, c := range shards {
		name := st.Shards[i].Name
		stanzas = append(stanzas, backup.Stanza{Name: name, DataDir: c.DataDir(), Port: c.Port,
			SocketDir: socketDir(abs, name), User: localpg.Superuser, Password: c.Password})
	}
	return backup.New(backup.Config{Home: dir, Repo: filepath.Join(abs, "backups"),
		CipherPass: strings.TrimSpace(string(b)), Cred: cred}, stanzas...)
}
