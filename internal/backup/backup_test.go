package backup_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const key = "test-repository-key-0123456789abcdef"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// shard is a live cluster archiving into a repository of its own.
type shard struct {
	dir string
	pg  *localpg.Cluster
	br  *backup.PgBackRest
}

func newShard(t *testing.T, ctx context.Context) *shard {
	t.Helper()
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testkit.Unavailable(t, "pgbackrest is not installed (apt install pgbackrest)")
	}
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	cred, err := localpg.OSUser()
	must(t, err)
	dir := testkit.Dir(t)
	port, err := localpg.FreePort()
	must(t, err)
	pg := &localpg.Cluster{Dir: dir + "/pg", Port: port, Password: localpg.RandomPassword(), SocketDir: dir + "/s"}
	br, err := backup.New(backup.Config{Home: dir + "/br", Repo: dir + "/repo", CipherPass: key, Cred: cred},
		backup.Stanza{Name: "shard-1", DataDir: pg.DataDir(), Port: port, SocketDir: pg.SocketDir,
			User: localpg.Superuser, Password: pg.Password})
	must(t, err)
	pg.Settings = br.ArchiveSettings("shard-1")
	must(t, pg.Init(ctx))
	_, err = pg.Start(ctx)
	must(t, err)
	t.Cleanup(func() { _ = pg.Stop(context.Background()) })
	must(t, br.Create(ctx, "shard-1"))
	return &shard{dir: dir, pg: pg, br: br}
}

func exec1(t *testing.T, ctx context.Context, dsn, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	must(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	must(t, err)
}

func notes(t *testing.T, ctx context.Context, dsn string) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	must(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT body FROM notes ORDER BY id`)
	must(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	return got
}

// One tenant database of a shard comes back as it was at a moment between
// two writes: what was committed before is there, what came after is not,
// and the live shard is untouched. Another database of the shard is not
// restored at all.
func TestRestoreOneDatabaseToAPointInTime(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 4*time.Minute)
	s := newShard(t, ctx)
	for _, db := range []string{"t_a", "t_b"} {
		exec1(t, ctx, s.pg.DSN("postgres"), "CREATE DATABASE "+db)
		exec1(t, ctx, s.pg.DSN(db), `CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
			INSERT INTO notes (body) VALUES ('in the backup')`)
	}
	began := time.Now()
	must(t, s.br.Backup(ctx, "shard-1", backup.Full))
	t.Logf("full backup: %s", time.Since(began).Round(time.Millisecond))

	// pgBackRest restores from a backup that stopped before the target, and
	// records stop times in whole seconds.
	time.Sleep(1500 * time.Millisecond)
	// After the backup, so it comes back by WAL replay.
	exec1(t, ctx, s.pg.DSN("t_a"), `INSERT INTO notes (body) VALUES ('before the target')`)
	var target time.Time
	conn, err := pgx.Connect(ctx, s.pg.DSN("postgres"))
	must(t, err)
	must(t, conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&target))
	conn.Close(ctx)
	time.Sleep(100 * time.Millisecond)
	exec1(t, ctx, s.pg.DSN("t_a"), `INSERT INTO notes (body) VALUES ('after the target')`)
	must(t, s.br.Check(ctx, "shard-1")) // the WAL of both is in the repository

	in, err := s.br.Info(ctx, "shard-1")
	must(t, err)
	if latest, ok := in.Latest(); !ok || in.Status != "ok" || latest.Type != backup.Full || latest.RepoSize <= 0 || in.ArchiveMax == "" {
		t.Fatalf("info after one full backup: %+v", in)
	}

	scratch := &localpg.Cluster{Dir: s.dir + "/scratch", Password: s.pg.Password,
		Settings: map[string]string{"archive_mode": "off"}}
	scratch.Port, err = localpg.FreePort()
	must(t, err)
	began = time.Now()
	must(t, s.br.RestoreDatabases(ctx, "shard-1", []string{"t_a"}, scratch.DataDir(), target))
	t.Logf("restore of t_a into scratch: %s", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	_, err = scratch.Start(ctx)
	must(t, err)
	t.Cleanup(func() { _ = scratch.Stop(context.Background()) })
	testkit.Eventually(t, time.Minute, "the scratch copy to replay to the target and promote", func() (bool, error) {
		conn, err := pgx.Connect(ctx, scratch.DSN("postgres"))
		if err != nil {
			return false, err
		}
		defer conn.Close(ctx)
		var recovering bool
		err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovering)
		return err == nil && !recovering, errors.Join(err, errors.New("still in recovery"))
	})
	t.Logf("replay to the target and promotion: %s", time.Since(began).Round(time.Millisecond))
	if got := strings.Join(notes(t, ctx, scratch.DSN("t_a")), ","); got != "in the backup,before the target" {
		t.Fatalf("restored t_a holds %q, want the rows before the target only", got)
	}
	if _, err := pgx.Connect(ctx, scratch.DSN("t_b")); err == nil {
		t.Fatal("t_b was restored too: only t_a was asked for")
	}
	if got := strings.Join(notes(t, ctx, s.pg.DSN("t_a")), ","); got != "in the backup,before the target,after the target" {
		t.Fatalf("the live t_a changed: %q", got)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 2*time.Minute)
	s := newShard(t, ctx)
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"unknown stanza", s.br.Backup(ctx, "shard-9", backup.Full), "no stanza"},
		{"unknown type", s.br.Backup(ctx, "shard-1", "weekly"), "unknown backup type"},
		{"a database name that is not one", s.br.RestoreDatabases(ctx, "shard-1", []string{"t_a' --delta"}, s.dir+"/x", time.Now()), "not a database name"},
		{"restore with no backup", s.br.RestoreDatabases(ctx, "shard-1", []string{"postgres"}, s.dir+"/y", time.Now()), "pgbackrest restore"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, tt.err, tt.want)
		}
		if tt.err != nil && strings.Contains(tt.err.Error(), key) {
			t.Errorf("%s: the error shows the repository key", tt.name)
		}
	}
	must(t, s.br.Backup(ctx, "shard-1", backup.Full))
	// The same repository without its key: nothing can be read.
	cred, _ := localpg.OSUser()
	wrong, err := backup.New(backup.Config{Home: s.dir + "/br2", Repo: s.dir + "/repo", CipherPass: strings.Repeat("x", 40), Cred: cred},
		backup.Stanza{Name: "shard-1", DataDir: s.pg.DataDir(), Port: s.pg.Port, SocketDir: s.pg.SocketDir,
			User: localpg.Superuser, Password: s.pg.Password})
	must(t, err)
	// What pgBackRest decrypts with the wrong key is random: every run
	// must give the same clear error, whatever bytes it quotes.
	for range 3 {
		_, err := wrong.Info(ctx, "shard-1")
		if err == nil || !strings.Contains(err.Error(), "repository key is wrong") {
			t.Fatalf("info with the wrong key: %v, want an error that says the key is wrong", err)
		}
		if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), strings.Repeat("x", 40)) {
			t.Fatalf("the error shows a key: %v", err)
		}
	}
	if err := wrong.CheckTarget(ctx, "shard-1", time.Now()); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Fatalf("a restore check with the wrong key: %v, want the repository unreadable", err)
	}
	for _, cfg := range []backup.Config{
		{Home: s.dir, Repo: s.dir, CipherPass: "short"},
		{Home: "", Repo: s.dir, CipherPass: key},
		{Home: s.dir, Repo: s.dir, CipherPass: key + "\nrepo1-path=/tmp"},
	} {
		if _, err := backup.New(cfg); err == nil {
			t.Errorf("New(%+v) was accepted", cfg)
		}
	}
	if _, err := backup.New(backup.Config{Home: s.dir + "/b3", Repo: s.dir + "/r3", CipherPass: key},
		backup.Stanza{Name: "bad]name", DataDir: "/x", Port: 1, SocketDir: "/y"}); err == nil {
		t.Error("a stanza name that would break the configuration file was accepted")
	}
}

// Verify passes on a sound repository and fails, naming the file, when a
// backup file is corrupted.
func TestVerify(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 2*time.Minute)
	s := newShard(t, ctx)
	must(t, s.br.Backup(ctx, "shard-1", backup.Full))
	must(t, s.br.Verify(ctx, "shard-1"))
	var victim string
	must(t, filepath.WalkDir(s.dir+"/repo/backup/shard-1", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && victim == "" && strings.Contains(path, "/pg_data/") && strings.HasSuffix(path, ".zst") {
			if info, ierr := d.Info(); ierr == nil && info.Size() > 64 {
				victim = path
			}
		}
		return err
	}))
	if victim == "" {
		t.Fatal("no backup file in the repository to corrupt")
	}
	f, err := os.OpenFile(victim, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("corrupted by the test"), 20)
	must(t, errors.Join(err, f.Close()))
	err = s.br.Verify(ctx, "shard-1")
	if err == nil || !strings.Contains(err.Error(), "failed verification") {
		t.Fatalf("verify of a corrupted repository: %v, want a failure", err)
	}
	t.Logf("verify of a corrupted repository: %v", err)
}
