package sidecar_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/auth/authtest"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/sidecar"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{}) // the tests dial a dead Redis on purpose
	testkit.Main(m)
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

const adminToken = "sidecar-test-admin-token-0123"

func migrateControl(ctx context.Context, pool *pgxpool.Pool) error {
	logger := slog.New(slog.DiscardHandler)
	if err := catalog.Migrate(ctx, pool, logger); err != nil {
		return err
	}
	return provision.Migrate(ctx, pool, logger)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// app is a service behind a sidecar: it records what reached it.
type app struct {
	*httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last http.Header
}

func newApp(t *testing.T, h http.HandlerFunc) *app {
	a := &app{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		a.mu.Lock()
		a.last = r.Header.Clone()
		a.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "caller=%s tenant=%s", r.Header.Get(sidecar.HeaderCaller), r.Header.Get(sidecar.HeaderTenantID))
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *app) lastHeader() http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

type bundle struct {
	ctx     context.Context
	control string
	admin   *api.Client
	creds   map[string]string
}

// setup starts a control plane and creates services: name -> allowed callers.
func setup(t *testing.T, services map[string]api.ServiceRequest) *bundle {
	t.Helper()
	ctx := testkit.Context(t, 3*time.Minute)
	_, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	srv, err := server.Start(ctx, server.Config{DatabaseURL: dsn, Roles: []server.Role{server.RoleControl},
		Listen: "127.0.0.1:0", AdminToken: adminToken})
	must(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	b := &bundle{ctx: ctx, control: "http://" + srv.Addr(), creds: map[string]string{}}
	b.admin = api.NewClient(b.control, adminToken)
	for name, req := range services {
		req.Name = name
		var out api.ServiceCreated
		must(t, b.admin.Do(ctx, "POST", "/v1/services", req, &out))
		b.creds[name] = out.Credential
	}
	return b
}

func (b *bundle) sidecar(t *testing.T, service, upstream string, mod ...func(*sidecar.Config)) *sidecar.Sidecar {
	t.Helper()
	cfg := sidecar.Config{Service: service, Credential: b.creds[service], ControlURL: b.control, Upstream: upstream,
		HeartbeatInterval: 200 * time.Millisecond,
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := sidecar.New(cfg)
	must(t, err)
	must(t, s.Start(b.ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s
}

// caller registers a key for service (as its sidecar would) and returns it,
// for tests that craft tokens by hand.
func (b *bundle) caller(t *testing.T, service string) *auth.PrivateKey {
	t.Helper()
	key, err := auth.GenerateKey(auth.ES256, service+"/test-"+uuid.NewString()[:8])
	must(t, err)
	c := api.NewClient(b.control, b.creds[service])
	must(t, c.Do(b.ctx, "POST", "/v1/services/"+service+"/instances", api.RegisterInstanceRequest{
		ID: uuid.New(), Address: "http://127.0.0.1:1", Kid: key.Kid, PublicKey: string(key.Public().PEM())}, nil))
	return key
}

type answer struct {
	status int
	code   string
	header http.Header
	body   string
}

func call(t testing.TB, method, url, token string, hdr map[string]string) answer {
	t.Helper()
	a, err := try(t, method, url, token, hdr)
	must(t, err)
	return a
}

// try is call that returns the transport's error instead of failing.
func try(t testing.TB, method, url, token string, hdr map[string]string) (answer, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(""))
	must(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(body)}
	if resp.StatusCode >= 400 {
		var p struct{ Code string }
		_ = json.Unmarshal(body, &p)
		a.code = p.Code
	}
	return a, nil
}

// resetByServer reports whether err is the server closing the connection
// while the client was still sending (not, say, a refused connection).
func resetByServer(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "connection reset by peer") || strings.Contains(err.Error(), "broken pipe")
}

// Every forged or misused token is refused with its code, and the service
// behind the sidecar sees none of them.
func TestAdversarialSuiteThroughTheSidecar(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{
		"notes":    {AllowedCallers: []string{"tester"}, ReplayProtection: true},
		"tester":   {AllowedCallers: []string{}},
		"intruder": {AllowedCallers: []string{}},
	})
	notes := newApp(t, nil)
	sc := b.sidecar(t, "notes", notes.URL)
	url := "http://" + sc.IngressAddr() + "/notes"
	f := authtest.Forger{Issuer: "tester", Audience: "notes", Key: b.caller(t, "tester"), Now: time.Now()}
	used := f.Valid()
	if a := call(t, "GET", url, used, nil); a.status != 200 || a.body != "caller=tester tenant=" {
		t.Fatalf("a valid token: %+v", a)
	}
	seen := notes.hits.Load()
	attacks := f.Attacks(used)
	attacks = append(attacks,
		authtest.Attack{Name: "no token", Code: "token_missing"},
		authtest.Attack{Name: "caller not on the allow-list", Code: "caller_not_allowed",
			Token: authtest.Forger{Issuer: "intruder", Audience: "notes", Key: b.caller(t, "intruder"), Now: time.Now()}.Valid()},
	)
	for _, a := range attacks {
		t.Run(a.Name, func(t *testing.T) {
			want, status := a.Code, auth.Status(a.Code)
			if len(a.Token) > 16<<10 {
				// Longer than any header the HTTP layer reads: refused before
				// the token is even looked at. The server answers 431 and
				// closes while the client may still be writing, so the
				// client sees either the 431 or the connection reset.
				got, err := try(t, "GET", url, a.Token, nil)
				switch {
				case err != nil && !resetByServer(err):
					t.Fatalf("want 431 or a reset, got %v", err)
				case err == nil && (got.code != "headers_too_large" || got.status != 431):
					t.Fatalf("got %d %q, want 431 headers_too_large (%s)", got.status, got.code, got.body)
				}
				return
			}
			got := call(t, "GET", url, a.Token, nil)
			if got.code != want || got.status != status {
				t.Fatalf("got %d %q, want %d %q (%s)", got.status, got.code, status, want, got.body)
			}
		})
	}
	if n := notes.hits.Load() - seen; n != 0 {
		t.Fatalf("the service saw %d of the refused requests", n)
	}

	// A client's Plinth-* headers never reach the service: only verified ones.
	a := call(t, "GET", url, f.Valid(), map[string]string{"Plinth-Tenant-Id": "victim", "Plinth-Caller": "edge"})
	if a.status != 200 || a.body != "caller=tester tenant=" {
		t.Fatalf("spoofed headers: %+v", a)
	}
	if h := notes.lastHeader(); h.Get("Authorization") != "" {
		t.Fatal("the token reached the service")
	}
}

// A flood of tokens with random kids of an allowed caller costs the key
// repository a bounded number of requests.
func TestUnknownKidFloodThroughTheSidecar(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{"notes": {AllowedCallers: []string{"tester"}}, "tester": {}})
	sc := b.sidecar(t, "notes", newApp(t, nil).URL)
	keyFetches := func() float64 {
		resp, err := http.Get(b.control + "/metrics")
		must(t, err)
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var n float64
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, `plinth_api_requests_total{code=`) && strings.Contains(line, `route="/v1/keys/{issuer}"`) {
				var v float64
				fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v)
				n += v
			}
		}
		return n
	}
	before := keyFetches()
	for i := range 300 {
		k, err := auth.GenerateKey(auth.ES256, fmt.Sprintf("tester/random-%d", i))
		must(t, err)
		f := authtest.Forger{Issuer: "tester", Audience: "notes", Key: k, Now: time.Now()}
		if a := call(t, "GET", "http://"+sc.IngressAddr()+"/", f.Valid(), nil); a.code != "unknown_key" {
			t.Fatalf("token %d: %+v", i, a)
		}
	}
	if n := keyFetches() - before; n > 10 {
		t.Fatalf("300 unknown kids made %v key fetches, want at most 10", n)
	}
}

// notes calls echo only through the two sidecars; the tenant travels along.
func TestServicesCallEachOtherThroughSidecars(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{
		"notes": {AllowedCallers: []string{"tester"}}, "echo": {AllowedCallers: []string{"notes"}}, "tester": {},
	})
	echo := newApp(t, nil)
	echoSC := b.sidecar(t, "echo", echo.URL)
	notesSC := b.sidecar(t, "notes", newApp(t, nil).URL)
	a := call(t, "GET", "http://"+notesSC.EgressAddr()+"/echo/hello?x=1", "", map[string]string{
		sidecar.HeaderTenantID: "01a209cf-ceac-7875-8189-ba2f30d64a83", sidecar.HeaderTenantSlug: "acme",
	})
	if a.status != 200 || a.body != "caller=notes tenant=01a209cf-ceac-7875-8189-ba2f30d64a83" {
		t.Fatalf("notes -> echo: %+v", a)
	}
	if h := echo.lastHeader(); h.Get(sidecar.HeaderTenantSlug) != "acme" {
		t.Fatalf("echo saw headers %v", h)
	}
	// Straight to echo's sidecar without a token: refused.
	if a := call(t, "GET", "http://"+echoSC.IngressAddr()+"/hello", "", nil); a.code != "token_missing" {
		t.Fatalf("without a token: %+v", a)
	}
	// echo may not call notes: notes' allow-list has only tester.
	if a := call(t, "GET", "http://"+echoSC.EgressAddr()+"/notes/x", "", nil); a.code != "caller_not_allowed" {
		t.Fatalf("echo -> notes: %+v", a)
	}
	for path, code := range map[string]string{"/nobody/x": "unknown_service", "/Bad_Name/x": "bad_target"} {
		if a := call(t, "GET", "http://"+notesSC.EgressAddr()+path, "", nil); a.code != code {
			t.Errorf("%s: %+v", path, a)
		}
	}
}

// Rotating keys while notes calls echo continuously fails no request.
func TestKeyRotationFailsNoRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{"notes": {}, "echo": {AllowedCallers: []string{"notes"}}})
	b.sidecar(t, "echo", newApp(t, nil).URL)
	notesSC := b.sidecar(t, "notes", newApp(t, nil).URL, func(c *sidecar.Config) { c.TokenLifetime = 2 * time.Second })
	var ok, failed atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				a := call(t, "GET", "http://"+notesSC.EgressAddr()+"/echo/ping", "", nil)
				if a.status == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%+v", a))
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	for gen := 2; gen <= 3; gen++ {
		must(t, b.admin.Do(b.ctx, "POST", "/v1/services/notes/rotate-keys", nil, nil))
		testkit.Eventually(t, 30*time.Second, "notes to rotate its key", func() (bool, error) {
			return scrape(t, notesSC, "plinth_sidecar_key_generation") == float64(gen), nil
		})
		time.Sleep(2500 * time.Millisecond) // tokens of the old key expire and new ones are minted
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 50 {
		t.Fatalf("%d requests failed (first: %v), %d succeeded", failed.Load(), firstFailure.Load(), ok.Load())
	}
}

func scrape(t *testing.T, sc *sidecar.Sidecar, metric string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + sc.AdminAddr() + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, metric+" ") || strings.HasPrefix(line, metric+"{") {
			var v float64
			fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v)
			sum += v
		}
	}
	return sum
}

// With one echo instance failing, idempotent calls are retried on the
// other and the failing one is ejected; a POST is not retried once sent.
func TestRetriesAndEjection(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{"notes": {}, "echo": {AllowedCallers: []string{"notes"}}})
	healthy := newApp(t, nil)
	broken := newApp(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", http.StatusServiceUnavailable) })
	b.sidecar(t, "echo", healthy.URL)
	b.sidecar(t, "echo", broken.URL)
	notesSC := b.sidecar(t, "notes", newApp(t, nil).URL)
	testkit.Eventually(t, 30*time.Second, "both echo instances to be known", func() (bool, error) {
		var eps api.Endpoints
		err := b.admin.Do(b.ctx, "GET", "/v1/services/echo/endpoints", nil, &eps)
		return err == nil && len(eps.Endpoints) == 2, err
	})
	for i := range 20 {
		if a := call(t, "GET", "http://"+notesSC.EgressAddr()+"/echo/x", "", nil); a.status != 200 {
			t.Fatalf("GET %d: %+v", i, a)
		}
	}
	if scrape(t, notesSC, "plinth_sidecar_retries_total") == 0 || scrape(t, notesSC, "plinth_sidecar_ejections_total") == 0 {
		t.Fatal("no retry or ejection was counted")
	}
	// The broken instance is ejected now: traffic goes to the healthy one.
	before := broken.hits.Load()
	for range 10 {
		call(t, "GET", "http://"+notesSC.EgressAddr()+"/echo/x", "", nil)
	}
	if broken.hits.Load() != before {
		t.Fatal("an ejected instance still got traffic")
	}
}

func TestRateLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{
		"notes": {AllowedCallers: []string{"tester"}, CallerRateLimit: 5, TenantRateLimit: 100}, "tester": {},
	})
	app := newApp(t, nil)
	rdb := testkit.Redis(t)
	prefix := "plinth:test:" + uuid.NewString() + ":"
	sharedCfg := func(c *sidecar.Config) { c.Redis = rdb; c.RedisPrefix = prefix }
	replicas := []*sidecar.Sidecar{b.sidecar(t, "notes", app.URL, sharedCfg), b.sidecar(t, "notes", app.URL, sharedCfg)}
	f := authtest.Forger{Issuer: "tester", Audience: "notes", Key: b.caller(t, "tester"), Now: time.Now()}
	tok := f.Valid()
	passed, limited := 0, 0
	var refusal answer
	for i := range 30 {
		a := call(t, "GET", "http://"+replicas[i%2].IngressAddr()+"/x", tok, nil)
		switch a.status {
		case 200:
			passed++
			if a.header.Get("RateLimit-Policy") == "" {
				t.Fatal("an admitted response lacks RateLimit-Policy")
			}
		case 429:
			limited++
			refusal = a
		default:
			t.Fatalf("unexpected %+v", a)
		}
	}
	if passed < 5 || passed > 8 || refusal.code != "rate_limited" || refusal.header.Get("Retry-After") == "" ||
		!strings.Contains(refusal.header.Get("RateLimit"), `"caller";r=0`) {
		t.Fatalf("two replicas sharing Redis passed %d of 30 at 5/s (limited %d); refusal %+v", passed, limited, refusal)
	}

	// Redis down: the local limit holds, and the fallback is counted.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	defer down.Close()
	lone := b.sidecar(t, "notes", app.URL, func(c *sidecar.Config) { c.Redis = down })
	passed = 0
	for range 20 {
		if call(t, "GET", "http://"+lone.IngressAddr()+"/x", f.Valid(), nil).status == 200 {
			passed++
		}
	}
	if passed < 5 || passed > 7 || scrape(t, lone, "plinth_sidecar_ratelimit_fallback_total") == 0 {
		t.Fatalf("with Redis down: passed %d of 20, fallbacks %v", passed, scrape(t, lone, "plinth_sidecar_ratelimit_fallback_total"))
	}
}

// Stop lets a request in flight finish and takes the instance out of
// discovery.
func TestStopDrains(t *testing.T) {
	t.Parallel()
	b := setup(t, map[string]api.ServiceRequest{"notes": {AllowedCallers: []string{"tester"}}, "tester": {}})
	started := make(chan struct{})
	slow := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, "done")
	})
	cfg := sidecar.Config{Service: "notes", Credential: b.creds["notes"], ControlURL: b.control, Upstream: slow.URL}
	sc, err := sidecar.New(cfg)
	must(t, err)
	must(t, sc.Start(b.ctx))
	f := authtest.Forger{Issuer: "tester", Audience: "notes", Key: b.caller(t, "tester"), Now: time.Now()}
	result := make(chan answer, 1)
	go func() { result <- call(t, "GET", "http://"+sc.IngressAddr()+"/x", f.Valid(), nil) }()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sc.Stop(ctx))
	if a := <-result; a.status != 200 || a.body != "done" {
		t.Fatalf("the request in flight: %+v", a)
	}
	var eps api.Endpoints
	must(t, b.admin.Do(b.ctx, "GET", "/v1/services/notes/endpoints", nil, &eps))
	if len(eps.Endpoints) != 0 {
		t.Fatalf("a stopped sidecar is still discoverable: %+v", eps)
	}
}
