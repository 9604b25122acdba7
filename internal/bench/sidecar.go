package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/server"
)

// ProxyConfig configures `plinth bench sidecar` (and the edge benchmark).
type ProxyConfig struct {
	Exe         string
	Duration    time.Duration // per run
	Rate        float64       // the fixed-rate run
	Connections int
	BodyBytes   int
	Progress    io.Writer
}

func (c *ProxyConfig) defaults() {
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Rate == 0 {
		c.Rate = 1000
	}
	if c.Connections == 0 {
		c.Connections = 16
	}
	if c.BodyBytes == 0 {
		c.BodyBytes = 1024
	}
}

// ProxyRow is one competitor's results.
type ProxyRow struct {
	Name      string      `json:"name"`
	Fixed     *LoadResult `json:"fixed_rate,omitempty"`
	Saturated *LoadResult `json:"saturated,omitempty"`
	// CoresPer1000 is the CPU the proxy's process used per 1,000 req/s at
	// the fixed rate (0 when it has no process of its own).
	CoresPer1000 float64 `json:"cores_per_1000_rps,omitempty"`
	Note         string  `json:"note,omitempty"`
}

// target is a competitor: an address and the process doing the work (0: none).
type target struct {
	name string
	addr string
	pid  int
}

// SidecarReport is what `plinth bench sidecar` measured.
type SidecarReport struct {
	Machine     Machine    `json:"machine"`
	Connections int        `json:"connections"`
	BodyBytes   int        `json:"body_bytes"`
	Rate        float64    `json:"fixed_rate_rps"`
	Seconds     float64    `json:"seconds_per_run"`
	Rows        []ProxyRow `json:"rows"`
	// AddedP99 is the sidecar's p99 minus the direct p99 at the fixed rate.
	AddedP99MS float64 `json:"added_p99_ms"`
	// Ratios of saturated throughput.
	SidecarOverNginx  float64 `json:"sidecar_over_nginx"`
	SidecarOverStdlib float64 `json:"sidecar_over_reverseproxy"`
	// The sidecar process at the fixed rate: CPU cores per 1,000 req/s and
	// resident memory (peak).
	CoresPer1000 float64 `json:"cores_per_1000_rps"`
	RSSMB        float64 `json:"rss_mb"`
	// Token verification, measured in process.
	VerifyCachedUS float64 `json:"verify_cached_us"`
	VerifyColdUS   float64 `json:"verify_cold_us"`
	ECDSAVerifyUS  float64 `json:"ecdsa_verify_us"`
}

// Sidecar runs the sidecar benchmark on a stack of its own.
func Sidecar(ctx context.Context, cfg ProxyConfig) (*SidecarReport, error) {
	cfg.defaults()
	say := progressf(cfg.Progress)
	rep := &SidecarReport{Connections: cfg.Connections, BodyBytes: cfg.BodyBytes, Rate: cfg.Rate, Seconds: cfg.Duration.Seconds()}
	say("starting a control plane…")
	cp, err := startControlPlane(ctx, []server.Role{server.RoleControl})
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	rep.Machine = cp.machine
	controlURL, admin := cp.url, cp.admin
	echoSvc, err := admin.CreateService(ctx, api.ServiceRequest{Name: "echo", AllowedCallers: []string{"bench"}})
	if err != nil {
		return nil, err
	}
	benchSvc, err := admin.CreateService(ctx, api.ServiceRequest{Name: "bench", AllowedCallers: []string{}})
	if err != nil {
		return nil, err
	}
	key, err := auth.GenerateKey(auth.ES256, "bench/load-1")
	if err != nil {
		return nil, err
	}
	if err := api.NewClient(controlURL, benchSvc.Credential).Do(ctx, "POST", "/v1/services/bench/instances",
		api.RegisterInstanceRequest{ID: uuid.New(), Address: "http://127.0.0.1:9", Kid: key.Kid, PublicKey: string(key.Public().PEM())}, nil); err != nil {
		return nil, err
	}
	// The caller reuses one token, as callers do for ~95% of its lifetime.
	minter, err := auth.NewMinter("bench", key, 30*time.Minute, nil)
	if err != nil {
		return nil, err
	}
	tok, err := minter.Token("echo", auth.Tenant{}, false)
	if err != nil {
		return nil, err
	}

	echo, err := StartEcho()
	if err != nil {
		return nil, err
	}
	defer echo.Close()
	say("starting the sidecar, a plain ReverseProxy and nginx…")
	sc, err := startSidecarProcess(ctx, cfg.Exe, controlURL, echoSvc.Credential, echo.Addr)
	if err != nil {
		return nil, err
	}
	defer sc.stop()
	rp, err := startProcess(ctx, cfg.Exe, []string{"bench", "reverse-proxy", "--upstream", echo.Addr}, []string{"GOMAXPROCS=" + gomaxprocs})
	if err != nil {
		return nil, err
	}
	defer rp.stop()
	targets := []target{
		{"(a) direct to the service", echo.Addr, 0},
		{"(b) Plinth sidecar (token verify, limits)", sc.addr, sc.pid()},
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

	rows, err := measureProxies(ctx, cfg, targets, "echo", map[string]string{"Authorization": "Bearer " + tok}, say)
	if err != nil {
		return nil, err
	}
	for _, tgt := range targets {
		rep.Rows = append(rep.Rows, *rows[tgt.addr])
	}
	rep.CoresPer1000 = rows[sc.addr].CoresPer1000
	rep.RSSMB, _ = peakRSSMB(sc.pid())
	direct, side, std := rows[echo.Addr], rows[sc.addr], rows[rp.addr]
	rep.AddedP99MS = side.Fixed.Latency.P99 - direct.Fixed.Latency.P99
	rep.SidecarOverStdlib = side.Saturated.Throughput / std.Saturated.Throughput
	if ng != nil {
		rep.SidecarOverNginx = side.Saturated.Throughput / rows[ng.Addr].Saturated.Throughput
	}
	rep.VerifyCachedUS, rep.VerifyColdUS, rep.ECDSAVerifyUS = verifyCosts()
	return rep, nil
}

// verifyCosts measures, in process, a verification answered by the cache,
// a full ES256 verification, and the bare crypto/ecdsa Verify it contains.
func verifyCosts() (cached, cold, raw float64) {
	key, _ := auth.GenerateKey(auth.ES256, "bench/k")
	m, _ := auth.NewMinter("bench", key, time.Hour, nil)
	v := auth.NewVerifier(auth.VerifierConfig{Audience: "echo", Keys: auth.StaticKeys{key.Kid: key.Public()}, CacheSize: 1 << 20})
	ctx := context.Background()
	tok, _ := m.Token("echo", auth.Tenant{ID: uuid.NewString(), Slug: "acme"}, false)
	_, _ = v.Verify(ctx, tok)
	const n = 200_000
	start := time.Now()
	for range n {
		_, _ = v.Verify(ctx, tok)
	}
	cached = float64(time.Since(start).Microseconds()) / n
	toks := make([]string, 2000)
	for i := range toks {
		toks[i], _ = m.Token("echo", auth.Tenant{}, true)
	}
	start = time.Now()
	for _, t := range toks {
		_, _ = v.Verify(ctx, t)
	}
	cold = float64(time.Since(start).Microseconds()) / float64(len(toks))
	pub := key.Public().Crypto().(*ecdsa.PublicKey)
	h := sha256.Sum256([]byte("x"))
	r, s, _ := ecdsa.Sign(rand.Reader, key.Signer().(*ecdsa.PrivateKey), h[:])
	start = time.Now()
	for range 2000 {
		ecdsa.Verify(pub, h[:], r, s)
	}
	raw = float64(time.Since(start).Microseconds()) / 2000
	return cached, cold, raw
}

// process is a plinth subprocess of the benchmark.
type process struct {
	cmd  *exec.Cmd
	addr string
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
	}
}

// startProcess runs exe args… --listen <free port> and waits until it listens.
func startProcess(ctx context.Context, exe string, args, env []string) (*process, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.CommandContext(ctx, exe, append(args, "--listen", addr)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, addr: addr}
	if err := waitListening(addr); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// gomaxprocs is what the proxies under test run with (env PLINTH_BENCH_GOMAXPROCS, default 1).
var gomaxprocs = func() string {
	if v := os.Getenv("PLINTH_BENCH_GOMAXPROCS"); v != "" {
		return v
	}
	return "1"
}()

func startSidecarProcess(ctx context.Context, exe, controlURL, credential, upstream string) (*process, error) {
	ports := make([]int, 3)
	for i := range ports {
		var err error
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	cmd := exec.CommandContext(ctx, exe, "serve", "--role", "sidecar", "--service", "echo", "--upstream", "http://"+upstream,
		"--control-url", controlURL, "--ingress", addr, "--egress", "127.0.0.1:"+strconv.Itoa(ports[1]),
		"--admin", "127.0.0.1:"+strconv.Itoa(ports[2]), "--log-level", "warn")
	// One P, like nginx's one worker: on a small machine a proxy that takes
	// every core only slows the load generator and the service it fronts.
	cmd.Env = append(os.Environ(), "PLINTH_SERVICE_CREDENTIAL="+credential, "GOMAXPROCS="+gomaxprocs)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, addr: addr}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(ports[2]) + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("the sidecar did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuSeconds is the user+system CPU time process pid used so far.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// peakRSSMB is the peak resident memory (VmHWM) of process pid.
func peakRSSMB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmHWM")
}

// PrintSidecar writes the report as a table, or as JSON.
func PrintSidecar(w io.Writer, r *SidecarReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "\nplinth bench sidecar: %d connections, %d-byte bodies, %.0fs per run, %d CPUs, %s; the Go proxies run with GOMAXPROCS=%s, nginx with one worker\n\n",
		r.Connections, r.BodyBytes, r.Seconds, r.Machine.CPUs, r.Machine.Go, gomaxprocs)
	printProxyRows(w, r.Rows, r.Rate)
	fmt.Fprintf(w, "\nadded p99 of (b) over (a) at %.0f req/s: %.2f ms  (target ≤ 0.5 ms)\n", r.Rate, r.AddedP99MS)
	if r.SidecarOverNginx > 0 {
		fmt.Fprintf(w, "saturated throughput (b)/(d): %.2f×  (target ≥ 1.0×, never below 0.8×)\n", r.SidecarOverNginx)
	}
	fmt.Fprintf(w, "saturated throughput (b)/(c): %.2f×  (target ≥ 1.5×)\n", r.SidecarOverStdlib)
	fmt.Fprintf(w, "sidecar CPU: %.2f cores per 1,000 req/s  (target ≤ 0.2); resident memory (peak): %.1f MB  (target ≤ 30 MB)\n",
		r.CoresPer1000, r.RSSMB)
	fmt.Fprintf(w, "token verify: cached %.2f µs (target ≤ 5 µs); cold ES256 %.1f µs (crypto/ecdsa.Verify alone: %.1f µs)\n",
		r.VerifyCachedUS, r.VerifyColdUS, r.ECDSAVerifyUS)
	return nil
}

func printProxyRows(w io.Writer, rows []ProxyRow, rate float64) {
	fmt.Fprintf(w, "%-44s %33s   %30s\n", "", fmt.Sprintf("at %.0f req/s", rate), "saturated")
	fmt.Fprintf(w, "%-44s %10s %10s %10s   %10s %9s %9s\n", "", "p50 ms", "p99 ms", "cores/1k", "req/s", "p50 ms", "p99 ms")
	for _, row := range rows {
		if row.Fixed == nil {
			fmt.Fprintf(w, "%-44s %s\n", row.Name, row.Note)
			continue
		}
		cores := "-"
		if row.CoresPer1000 > 0 {
			cores = fmt.Sprintf("%.2f", row.CoresPer1000)
		}
		fmt.Fprintf(w, "%-44s %10.2f %10.2f %10s   %10.0f %9.2f %9.2f", row.Name, row.Fixed.Latency.P50, row.Fixed.Latency.P99,
			cores, row.Saturated.Throughput, row.Saturated.Latency.P50, row.Saturated.Latency.P99)
		if row.Note != "" {
			fmt.Fprintf(w, "  (%s)", row.Note)
		}
		fmt.Fprintln(w)
	}
}

// controlPlane is an in-process control plane on a cluster of its own.
type controlPlane struct {
	url     string
	admin   *api.Client
	machine Machine
	// shardDSN is the control cluster's, for a shard on the same server.
	shardDSN string
	stop     func()
}

// startControlPlane makes a cluster in a temporary directory and starts a
// server with roles on it.
func startControlPlane(ctx context.Context, roles []server.Role) (_ *controlPlane, err error) {
	var undo []func()
	cp := &controlPlane{stop: func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}}
	defer func() {
		if err != nil {
			cp.stop()
		}
	}()
	dir, err := os.MkdirTemp("", "plinth-bench-")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	port, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	cluster := &localpg.Cluster{Dir: filepath.Join(dir, "control"), Port: port}
	if err := cluster.Init(ctx); err != nil {
		return nil, err
	}
	if _, err := cluster.Start(ctx); err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = cluster.Stop(context.Background()) })
	conn, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE plinth")
	var pgVersion string
	if err == nil {
		err = conn.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)
	}
	conn.Close(ctx)
	if err != nil {
		return nil, err
	}
	cp.machine = machine(pgVersion)
	token := "bench-admin-" + uuid.NewString()
	ctl, err := server.Start(ctx, server.Config{DatabaseURL: cluster.DSN("plinth"), Roles: roles,
		Listen: "127.0.0.1:0", AdminToken: token, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = ctl.Stop(context.Background()) })
	cp.url = "http://" + ctl.Addr()
	cp.admin = api.NewClient(cp.url, token)
	cp.shardDSN = cluster.DSN("postgres")
	return cp, nil
}
