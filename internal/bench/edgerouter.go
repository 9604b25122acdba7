package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/server"
)

// EdgeReport is what `plinth bench edge` measured.
type EdgeReport struct {
	Machine     Machine    `json:"machine"`
	Connections int        `json:"connections"`
	BodyBytes   int        `json:"body_bytes"`
	Rate        float64    `json:"fixed_rate_rps"`
	Seconds     float64    `json:"seconds_per_run"`
	Rows        []ProxyRow `json:"rows"`
	AddedP99MS  float64    `json:"added_p99_ms"`
	// Ratios of saturated throughput, and the edge's p99 over nginx's.
	EdgeOverNginx    float64 `json:"edge_over_nginx"`
	EdgeOverStdlib   float64 `json:"edge_over_reverseproxy"`
	EdgeP99OverNginx float64 `json:"edge_p99_over_nginx_p99"`
	CoresPer1000     float64 `json:"cores_per_1000_rps"`
	RSSMB            float64 `json:"rss_mb"`
}

// EdgeRouter runs the edge benchmark on a stack of its own: a control
// plane with a worker, one shard on the control cluster, an active tenant,
// and a service whose only instance is the echo upstream itself, so that
// the edge (tenant lookup, state check, limits, token minting) forwards
// straight to it: one hop, like nginx's.
func EdgeRouter(ctx context.Context, cfg ProxyConfig) (*EdgeReport, error) {
	cfg.defaults()
	say := progressf(cfg.Progress)
	rep := &EdgeReport{Connections: cfg.Connections, BodyBytes: cfg.BodyBytes, Rate: cfg.Rate, Seconds: cfg.Duration.Seconds()}
	say("starting a control plane, a worker and a shard…")
	cp, err := startControlPlane(ctx, []server.Role{server.RoleControl, server.RoleWorker})
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	rep.Machine = cp.machine
	controlURL, admin := cp.url, cp.admin
	if _, err := admin.CreateRegion(ctx, api.CreateRegionRequest{Name: "bench-1"}); err != nil {
		return nil, err
	}
	if _, err := admin.CreateShard(ctx, api.CreateShardRequest{Name: "shard-1", Region: "bench-1", DSN: cp.shardDSN}); err != nil {
		return nil, err
	}
	if _, err := admin.RegisterProduct(ctx, api.RegisterProductRequest{Name: "bench", Default: true, Migrations: []catalog.Migration{
		{Version: 1, Name: "items", SQL: "-- +goose Up\nCREATE TABLE items (id int);"}}}); err != nil {
		return nil, err
	}
	tr, err := admin.CreateTenant(ctx, api.CreateTenantRequest{Slug: "bench"})
	if err != nil {
		return nil, err
	}
	if op, err := admin.WaitOperation(ctx, tr.Operation.ID.String(), nil); err != nil || op.State != catalog.OperationSucceeded {
		return nil, fmt.Errorf("provision the bench tenant: %v %+v", err, op)
	}

	echo, err := StartEcho()
	if err != nil {
		return nil, err
	}
	defer echo.Close()
	svc, err := admin.CreateService(ctx, api.ServiceRequest{Name: "bench-echo", AllowedCallers: []string{"edge"}, Routes: []string{"/"}})
	if err != nil {
		return nil, err
	}
	edgeSvc, err := admin.CreateService(ctx, api.ServiceRequest{Name: "edge", AllowedCallers: []string{}})
	if err != nil {
		return nil, err
	}
	// The service's only instance is the echo upstream itself.
	key, err := auth.GenerateKey(auth.ES256, "bench-echo/bench-1")
	if err != nil {
		return nil, err
	}
	instance := uuid.New()
	svcClient := api.NewClient(controlURL, svc.Credential)
	if err := svcClient.Do(ctx, "POST", "/v1/services/bench-echo/instances", api.RegisterInstanceRequest{ID: instance,
		Address: "http://" + echo.Addr, Kid: key.Kid, PublicKey: string(key.Public().PEM())}, nil); err != nil {
		return nil, err
	}
	hbCtx, stopHeartbeats := context.WithCancel(ctx)
	defer stopHeartbeats()
	go func() {
		t := time.NewTicker(api.HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-t.C:
				_ = svcClient.Do(hbCtx, "POST", "/v1/services/bench-echo/instances/"+instance.String()+"/heartbeat", nil, nil)
			}
		}
	}()

	say("starting the edge, a plain ReverseProxy and nginx…")
	ed, err := startEdgeProcess(ctx, cfg.Exe, controlURL, edgeSvc.Credential)
	if err != nil {
		return nil, err
	}
	defer ed.stop()
	const host = "bench.plinth.localhost"
	if err := checkEdge(ctx, ed.addr, host); err != nil {
		return nil, err
	}
	rp, err := startProcess(ctx, cfg.Exe, []string{"bench", "reverse-proxy", "--upstream", echo.Addr}, []string{"GOMAXPROCS=" + gomaxprocs})
	if err != nil {
		return nil, err
	}
	defer rp.stop()
	targets := []target{
		{"(a) direct to the service", echo.Addr, 0},
		{"(b) Plinth edge (lookup, state, limits, token)", ed.addr, ed.pid()},
		{"(c) httputil.ReverseProxy", rp.addr, rp.pid()},
	}
	ng, err := StartNginx(ctx, echo.Addr)
	switch {
	case err == nil:
		defer ng.Close()
		targets = append(targets, target{"(d) nginx, 1 worker, upstream keep-alive", ng.Addr, ng.WorkerPID()})
	case errors.Is(err, ErrNoNginx):
		rep.Rows = append(rep.Rows, ProxyRow{Name: "(d) nginx", Note: err.Error()})
	default:
		return nil, err
	}
	rows, err := measureProxies(ctx, cfg, targets, host, nil, say)
	if err != nil {
		return nil, err
	}
	for _, tgt := range targets {
		rep.Rows = append(rep.Rows, *rows[tgt.addr])
	}
	direct, edge, std := rows[echo.Addr], rows[ed.addr], rows[rp.addr]
	rep.CoresPer1000 = edge.CoresPer1000
	rep.RSSMB, _ = peakRSSMB(ed.pid())
	rep.AddedP99MS = edge.Fixed.Latency.P99 - direct.Fixed.Latency.P99
	rep.EdgeOverStdlib = edge.Saturated.Throughput / std.Saturated.Throughput
	if ng != nil {
		n := rows[ng.Addr]
		rep.EdgeOverNginx = edge.Saturated.Throughput / n.Saturated.Throughput
		rep.EdgeP99OverNginx = edge.Saturated.Latency.P99 / n.Saturated.Latency.P99
	}
	return rep, nil
}

// measureProxies drives every target with the same load, at the fixed rate
// and saturated, in interleaved rounds, and returns the rows by address.
func measureProxies(ctx context.Context, cfg ProxyConfig, targets []target, host string, headers map[string]string,
	say func(string, ...any)) (map[string]*ProxyRow, error) {
	body := make([]byte, cfg.BodyBytes)
	loads := make([]Load, len(targets))
	for i, tgt := range targets {
		loads[i] = Load{Addr: tgt.addr, Host: host, Path: "/echo", Body: body, Headers: headers, Connections: cfg.Connections}
		warm := loads[i]
		warm.Duration = time.Second
		if _, err := warm.Run(ctx); err != nil {
			return nil, err
		}
	}
	fixed := make([]Load, len(loads))
	for i := range loads {
		fixed[i] = loads[i]
		fixed[i].Rate = cfg.Rate
	}
	say("at %.0f req/s, each target in turn, %s in all each…", cfg.Rate, cfg.Duration)
	cpu0 := make([]float64, len(targets))
	for i, t := range targets {
		cpu0[i] = cpuSeconds(t.pid)
	}
	frs, err := Interleave(ctx, fixed, cfg.Duration, 2*time.Second)
	if err != nil {
		return nil, err
	}
	cpuUsed := make([]float64, len(targets))
	for i, t := range targets {
		cpuUsed[i] = cpuSeconds(t.pid) - cpu0[i]
	}
	say("saturating, each target in turn, %s in all each…", cfg.Duration)
	srs, err := Interleave(ctx, loads, cfg.Duration, 2*time.Second)
	if err != nil {
		return nil, err
	}
	rows := map[string]*ProxyRow{}
	for i, tgt := range targets {
		row := &ProxyRow{Name: tgt.name, Fixed: &frs[i], Saturated: &srs[i]}
		// Each process was measured over all the fixed-rate rounds but only
		// worked during its own.
		if tgt.pid != 0 && frs[i].Throughput > 0 {
			row.CoresPer1000 = cpuUsed[i] / frs[i].Seconds / (frs[i].Throughput / 1000)
		}
		if n := frs[i].Errors + srs[i].Errors + frs[i].Non2xx + srs[i].Non2xx; n > 0 {
			row.Note = fmt.Sprintf("%d errors or non-2xx: %s", n, frs[i].FirstError+srs[i].FirstError)
		}
		rows[tgt.addr] = row
	}
	return rows, nil
}

func startEdgeProcess(ctx context.Context, exe, controlURL, credential string) (*process, error) {
	ports := make([]int, 2)
	for i := range ports {
		var err error
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	admin := "127.0.0.1:" + strconv.Itoa(ports[1])
	// Limits stay on (high enough not to refuse): their cost is measured.
	cmd := exec.CommandContext(ctx, exe, "serve", "--role", "edge", "--region", "bench-1", "--edge-listen", addr,
		"--edge-admin", admin, "--control-url", controlURL, "--access-log=false", "--log-level", "warn",
		"--tenant-rate", "10000000", "--tenant-concurrency", "100000")
	cmd.Env = append(os.Environ(), "PLINTH_SERVICE_CREDENTIAL="+credential, "GOMAXPROCS="+gomaxprocs)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, addr: addr}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("the edge did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkEdge makes sure a request through the edge reaches the upstream
// before anything is measured.
func checkEdge(ctx context.Context, addr, host string) error {
	var last string
	for range 100 {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/echo", strings.NewReader("ping"))
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("a request through the edge does not reach the service: %s", last)
}

// PrintEdge writes the report as a table, or as JSON.
func PrintEdge(w io.Writer, r *EdgeReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "\nplinth bench edge: %d connections, %d-byte bodies, %.0fs per run, %d CPUs, %s; the Go proxies run with GOMAXPROCS=%s, nginx with one worker\n\n",
		r.Connections, r.BodyBytes, r.Seconds, r.Machine.CPUs, r.Machine.Go, gomaxprocs)
	printProxyRows(w, r.Rows, r.Rate)
	fmt.Fprintf(w, "\nadded p99 of (b) over (a) at %.0f req/s: %.2f ms  (target ≤ 1 ms)\n", r.Rate, r.AddedP99MS)
	if r.EdgeOverNginx > 0 {
		fmt.Fprintf(w, "saturated throughput (b)/(d): %.2f×  (target ≥ 1.0×, never below 0.8×); saturated p99 (b)/(d): %.2f×  (target ≤ 1.0×)\n",
			r.EdgeOverNginx, r.EdgeP99OverNginx)
	}
	fmt.Fprintf(w, "saturated throughput (b)/(c): %.2f×  (target ≥ 1.5×)\n", r.EdgeOverStdlib)
	fmt.Fprintf(w, "edge CPU: %.2f cores per 1,000 req/s; resident memory (peak): %.1f MB\n", r.CoresPer1000, r.RSSMB)
	return nil
}
