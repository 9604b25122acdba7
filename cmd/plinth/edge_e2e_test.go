package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/sidecar"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// freeAddr returns a loopback address nothing listens on (for a process
// that must come back on the same one).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().String()
}

// The control plane, the edge and a sidecar as separate processes: kill -9
// of the control plane does not interrupt a tenant's traffic through the
// edge, and once it is back the edge follows changes again without a
// restart.
func TestEdgeKeepsServingWhenTheControlPlaneIsKilled(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 5*time.Minute)
	_, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	shard := testkit.SharedCluster(t)
	controlAddr := freeAddr(t)
	controlURL := "http://" + controlAddr
	start := func(name string, env []string, args ...string) *exec.Cmd {
		cmd := plinth(ctx, env, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start the %s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd
	}
	startControl := func() *exec.Cmd {
		cmd := start("control plane", []string{"PLINTH_ADMIN_TOKEN=" + token}, "serve", "--role", "all", "--database-url", dsn,
			"--listen", controlAddr, "--log-level", "error")
		testkit.Eventually(t, time.Minute, "the control plane to answer", func() (bool, error) {
			resp, err := http.Get(controlURL + "/readyz")
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == 200, nil
		})
		return cmd
	}
	control := startControl()
	c := api.NewClient(controlURL, token)
	must(t, errOf(c.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"})))
	must(t, errOf(c.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: shard.DSN("postgres")})))
	must(t, errOf(c.RegisterProduct(ctx, api.RegisterProductRequest{Name: "shop", Default: true,
		Migrations: []catalog.Migration{{Version: 1, Name: "carts", SQL: "-- +goose Up\nCREATE TABLE carts (id int);"}}})))
	dir := testkit.Dir(t)
	creds := map[string]string{}
	for name, req := range map[string]api.ServiceRequest{
		"shop": {AllowedCallers: []string{"edge"}, Routes: []string{"/shop"}, Product: "shop"},
		"edge": {},
	} {
		req.Name = name
		out, err := c.CreateService(ctx, req)
		must(t, err)
		creds[name] = filepath.Join(dir, name+".credential")
		must(t, os.WriteFile(creds[name], []byte(out.Credential), 0o600))
	}
	resp, err := c.CreateTenant(ctx, api.CreateTenantRequest{Slug: "acme"})
	must(t, err)
	op, err := c.WaitOperation(ctx, resp.Operation.ID.String(), nil)
	must(t, err)
	if op.State != catalog.OperationSucceeded {
		t.Fatalf("provision acme: %+v", op)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tenant=%s", r.Header.Get(sidecar.HeaderTenantSlug))
	}))
	t.Cleanup(app.Close)
	start("sidecar", nil, "serve", "--role", "sidecar", "--service", "shop", "--upstream", app.URL, "--control-url", controlURL,
		"--credential-file", creds["shop"], "--ingress", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--log-level", "error")
	edgeAddr := freeAddr(t)
	start("edge", nil, "serve", "--role", "edge", "--region", "r1", "--edge-listen", edgeAddr, "--edge-admin", "127.0.0.1:0",
		"--control-url", controlURL, "--credential-file", creds["edge"], "--access-log=false", "--log-level", "error")
	call := func() (int, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+edgeAddr+"/shop/cart", nil)
		req.Host = "acme.plinth.localhost"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	testkit.Eventually(t, time.Minute, "acme through the edge", func() (bool, error) {
		code, body := call()
		return code == 200 && body == "tenant=acme", fmt.Errorf("%d %s", code, body)
	})

	must(t, control.Process.Signal(syscall.SIGKILL))
	_ = control.Wait()
	if _, err := http.Get(controlURL + "/healthz"); err == nil {
		t.Fatal("the control plane still answers after kill -9")
	}
	for i := range 50 {
		if code, body := call(); code != 200 {
			t.Fatalf("request %d with the control plane dead: %d %s", i, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	startControl()
	_, err = c.TenantAction(ctx, "acme", catalog.ActionSuspend, "e2e")
	must(t, err)
	testkit.Eventually(t, time.Minute, "the edge to see the suspension made after the restart", func() (bool, error) {
		code, body := call()
		return code == 403 && strings.Contains(body, "tenant_suspended"), fmt.Errorf("%d %s", code, body)
	})
}
