package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/devstack"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// The getting-started walkthrough: under plinth dev, a tenant's tables are
// dropped by mistake and one plinth tenant restore brings them back through
// the edge. Then plinth dev is killed (-9) in the middle of another restore,
// and the restore finishes after the next start, the tenant never left
// half-swapped.
func TestDevRestoreWalkthrough(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 6*time.Minute)
	if _, err := localpg.FindBinDir(); err != nil {
		testkit.Unavailable(t, "%v", err)
	}
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testkit.Unavailable(t, "pgbackrest is not installed (apt install pgbackrest)")
	}
	home := testkit.Dir(t)
	env := []string{"PLINTH_HOME=" + home, "PLINTH_DATABASE_URL="}
	startDev := func() *exec.Cmd {
		var out bytes.Buffer
		dev := plinth(ctx, env, "dev", "--listen", "127.0.0.1:0", "--edge-listen", "127.0.0.1:0", "--shards", "1", "--warm-pool", "1")
		dev.Stdout, dev.Stderr = &out, &out
		must(t, dev.Start())
		testkit.Eventually(t, 2*time.Minute, "plinth dev to be ready", func() (bool, error) {
			return strings.Contains(out.String(), "Plinth is running"), fmt.Errorf("output so far: %s", out.String())
		})
		return dev
	}
	run := func(args ...string) (string, error) {
		out, err := plinth(ctx, env, args...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { devstack.StopClusters(home) })

	dev := startDev()
	if got, err := run("tenant", "create", "acme", "--wait"); err != nil {
		t.Fatalf("tenant create: %v\n%s", err, got)
	}
	testkit.Eventually(t, 2*time.Minute, "the first backups", func() (bool, error) {
		got, err := run("backup", "list", "-o", "json")
		var infos []backup.Info
		if err == nil {
			err = json.Unmarshal([]byte(got), &infos)
		}
		return err == nil && len(infos) == 2 && len(infos[0].Backups) > 0 && len(infos[1].Backups) > 0, fmt.Errorf("%v: %s", err, got)
	})
	if got, err := run("backup", "verify"); err != nil || strings.Count(got, " ok ") != 2 {
		t.Fatalf("plinth backup verify: %v\n%s", err, got)
	}
	testkit.Eventually(t, 2*time.Minute, "shard list to show the scheduled backups' status", func() (bool, error) {
		got, err := run("shard", "list")
		return err == nil && strings.Contains(got, "full ") && !strings.Contains(got, "failing") && !strings.Contains(got, "not by Plinth"),
			fmt.Errorf("%v: %s", err, got)
	})
	st, err := devstack.ReadState(home)
	must(t, err)
	if code, body := edgeDo(t, ctx, st.EdgeURL, "acme.plinth.localhost", "POST", "/api/projects", `{"key": "WEB", "name": "Website"}`, nil); code != 201 && code != 200 {
		t.Fatalf("create a project: %d %s", code, body)
	}
	time.Sleep(1500 * time.Millisecond) // after the backup's stop second, and the project's commit
	target := time.Now().UTC().Format(time.RFC3339Nano)
	time.Sleep(500 * time.Millisecond)
	if got, err := run("dev", "psql", "acme", "--", "-c", "DROP TABLE comments, issues, projects"); err != nil {
		t.Fatalf("drop the tables: %v\n%s", err, got)
	}
	if code, _ := edgeDo(t, ctx, st.EdgeURL, "acme.plinth.localhost", "GET", "/api/projects", "", nil); code == 200 {
		t.Fatal("the projects are still served after the DROP")
	}
	got, err := run("tenant", "restore", "acme", "--to", target)
	if err != nil || !strings.Contains(got, "succeeded") || !strings.Contains(got, "swapped") {
		t.Fatalf("tenant restore: %v\n%s", err, got)
	}
	t.Logf("plinth tenant restore:\n%s", got)
	testkit.Eventually(t, 30*time.Second, "the project to be back through the edge", func() (bool, error) {
		code, body := edgeDo(t, ctx, st.EdgeURL, "acme.plinth.localhost", "GET", "/api/projects", "", nil)
		return code == 200 && strings.Contains(body, `"key":"WEB"`), fmt.Errorf("%d %s", code, body)
	})

	// kill -9 in the middle of a restore (to the same moment again).
	got, err = run("tenant", "restore", "acme", "--to", target, "--no-wait", "-o", "json")
	if err != nil {
		t.Fatalf("tenant restore --no-wait: %v\n%s", err, got)
	}
	var r catalog.Restore
	must(t, json.Unmarshal([]byte(got), &r))
	time.Sleep(1500 * time.Millisecond)
	must(t, dev.Process.Signal(syscall.SIGKILL))
	_ = dev.Wait()
	dev = startDev()
	defer func() {
		_ = dev.Process.Signal(os.Interrupt)
		_ = dev.Wait()
	}()
	// River hands the killed worker's job on after its rescue delay.
	testkit.Eventually(t, 3*time.Minute, "the restore to finish after the restart", func() (bool, error) {
		got, err := run("restore", "get", r.ID.String(), "-o", "json")
		if err == nil {
			err = json.Unmarshal([]byte(got), &r)
		}
		return err == nil && r.State != catalog.RestoreRunning, fmt.Errorf("%v: %s", err, r.State)
	})
	if r.State != catalog.RestoreSucceeded {
		logs, _ := os.ReadFile(home + "/plinth.log")
		for _, l := range strings.Split(string(logs), "\n") {
			if strings.Contains(l, "restore") && !strings.Contains(l, `"msg":"request"`) {
				t.Log(l)
			}
		}
		t.Fatalf("after kill -9 and a restart the restore is %s: %+v", r.State, r.Items)
	}
	got, err = run("tenant", "get", "acme", "-o", "json")
	if err != nil || !strings.Contains(got, `"state": "active"`) || !strings.Contains(got, r.Items[0].RestoredDatabase) {
		t.Fatalf("acme after the resumed restore (want active on %s): %v\n%s", r.Items[0].RestoredDatabase, err, got)
	}
	st, err = devstack.ReadState(home)
	must(t, err)
	if code, body := edgeDo(t, ctx, st.EdgeURL, "acme.plinth.localhost", "GET", "/api/projects", "", nil); code != 200 || !strings.Contains(body, `"key":"WEB"`) {
		t.Fatalf("after the resumed restore: %d %s", code, body)
	}

	// A drill of every tenant: the restored acme (a database newer than
	// the backup) and the shard's heartbeat come back from the backups.
	got, err = run("drill", "run", "--tenants", "all", "-o", "json")
	var d catalog.Drill
	if err == nil {
		err = json.Unmarshal([]byte(got), &d)
	}
	if err != nil || d.State != catalog.DrillSucceeded || len(d.Results) != 2 {
		t.Fatalf("plinth drill run: %v\n%s", err, got)
	}
	// The restores left the catalog and the shard in agreement (the
	// replaced databases are kept, known and fenced).
	if got, err := run("catalog", "verify"); err != nil || !strings.Contains(got, "0 finding(s)") {
		t.Fatalf("plinth catalog verify: %v\n%s", err, got)
	}
	got, err = run("drill", "report")
	if err != nil || !strings.Contains(got, "OVERDUE") || strings.Contains(got, "No successful drill") {
		t.Fatalf("plinth drill report: %v\n%s", err, got)
	}

	// The moment before the DROP again, into a new tenant this time: it
	// serves the project at its own host, and acme is left as it is.
	got, err = run("tenant", "restore", "acme", "--to", target, "--as", "acme-old")
	if err != nil || !strings.Contains(got, "into new tenant acme-old") || !strings.Contains(got, "swapped") {
		t.Fatalf("tenant restore --as: %v\n%s", err, got)
	}
	testkit.Eventually(t, 30*time.Second, "acme-old to serve the project through the edge", func() (bool, error) {
		code, body := edgeDo(t, ctx, st.EdgeURL, "acme-old.plinth.localhost", "GET", "/api/projects", "", nil)
		return code == 200 && strings.Contains(body, `"key":"WEB"`), fmt.Errorf("%d %s", code, body)
	})
	got, err = run("tenant", "get", "acme", "-o", "json")
	if err != nil || !strings.Contains(got, r.Items[0].RestoredDatabase) {
		t.Fatalf("acme after the restore into acme-old (want it still on %s): %v\n%s", r.Items[0].RestoredDatabase, err, got)
	}
	if got, err := run("catalog", "verify"); err != nil || !strings.Contains(got, "0 finding(s)") {
		t.Fatalf("plinth catalog verify after --as: %v\n%s", err, got)
	}
}
