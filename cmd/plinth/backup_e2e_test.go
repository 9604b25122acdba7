package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// plinth serve with --backup-config backs up the shards on its host: the
// settings plinth backup settings prints make a server archive into the
// repository, serve creates the stanza, and plinth backup run takes a
// backup through the worker's job that plinth backup list then shows.
func TestServeBacksUpWithABackupConfig(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testkit.Unavailable(t, "pgbackrest is not installed (apt install pgbackrest)")
	}
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	ctx := testkit.Context(t, 5*time.Minute)
	dir := testkit.Dir(t)
	port, err := localpg.FreePort()
	must(t, err)
	pg := &localpg.Cluster{Dir: dir + "/pg", Port: port, Password: localpg.RandomPassword(), SocketDir: dir + "/s"}
	must(t, os.WriteFile(dir+"/backup.key", []byte("serve-backup-test-key-0123456789abcdef\n"), 0o600))
	must(t, os.WriteFile(dir+"/pg.password", []byte(pg.Password+"\n"), 0o600))
	config := filepath.Join(dir, "backup.json")
	must(t, os.WriteFile(config, fmt.Appendf(nil, `{"home": %q, "repo": %q, "key_file": %q,
		"stanzas": [{"name": "s1", "data_dir": %q, "port": %d, "socket_dir": %q, "user": %q, "password_file": %q}]}`,
		dir+"/br", dir+"/repo", dir+"/backup.key", pg.DataDir(), port, pg.SocketDir, localpg.Superuser, dir+"/pg.password"), 0o600))

	out, err := plinth(ctx, nil, "backup", "settings", "--backup-config", config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "# shard s1") {
		t.Fatalf("plinth backup settings: %v\n%s", err, out)
	}
	pg.Settings = map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			pg.Settings[k] = v
		}
	}
	if pg.Settings["archive_mode"] != "on" || !strings.Contains(pg.Settings["archive_command"], "archive-push") {
		t.Fatalf("the settings printed: %v", pg.Settings)
	}
	must(t, pg.Init(ctx))
	_, err = pg.Start(ctx)
	must(t, err)
	t.Cleanup(func() { _ = pg.Stop(context.Background()) })

	_, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	apiPort, err := localpg.FreePort()
	must(t, err)
	url := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	serve := plinth(ctx, []string{"PLINTH_ADMIN_TOKEN=" + token}, "serve", "--role", "all", "--database-url", dsn,
		"--listen", fmt.Sprintf("127.0.0.1:%d", apiPort), "--backup-config", config, "--log-level", "warn")
	serve.Stderr = os.Stderr
	must(t, serve.Start())
	t.Cleanup(func() {
		_ = serve.Process.Signal(os.Interrupt)
		_ = serve.Wait()
	})
	c := api.NewClient(url, token)
	testkit.Eventually(t, time.Minute, "plinth serve to answer", func() (bool, error) {
		_, err := c.ListRegions(ctx)
		return err == nil, err
	})
	must(t, errOf(c.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"})))
	must(t, errOf(c.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: pg.DSN("postgres")})))

	run := func(args ...string) (string, error) {
		out, err := plinth(ctx, []string{"PLINTH_URL=" + url, "PLINTH_TOKEN=" + token}, args...).CombinedOutput()
		return string(out), err
	}
	// The stanza is created in the background at start; until then a
	// backup fails and is retried.
	testkit.Eventually(t, 3*time.Minute, "plinth backup run to take a backup", func() (bool, error) {
		got, err := run("backup", "run", "--shard", "s1", "--type", "full")
		return err == nil && strings.Contains(got, "s1"), fmt.Errorf("%v: %s", err, got)
	})
	got, err := run("backup", "list")
	if err != nil || !strings.Contains(got, "full") {
		t.Fatalf("plinth backup list: %v\n%s", err, got)
	}
	if got, err := run("backup", "verify"); err != nil || !strings.Contains(got, " ok ") {
		t.Fatalf("plinth backup verify: %v\n%s", err, got)
	}
}
