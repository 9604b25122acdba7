// Package sidecar is Plinth's service proxy: it runs next to a service and
// does its service-to-service auth and traffic management, so the service
// only speaks plain HTTP.
//
// Inbound (the ingress), it verifies each caller's service token, checks
// the caller against the service's allow-list, applies per-caller and
// per-tenant rate limits, replaces any client-supplied Plinth-* headers
// with verified ones (Plinth-Caller, Plinth-Tenant-Id, …) and forwards to
// the service. Outbound (the egress, on loopback), the service calls
// http://<egress>/<service>/<path>; the sidecar finds the service's live
// instances through the control plane, mints a token for it, balances
// over kept-alive connections, retries idempotent requests under a retry
// budget, and ejects failing instances for a while.
//
// The sidecar makes its signing key itself and registers the public half
// with its registration credential; the private key never leaves the
// process. Heartbeats carry the service's configuration back (allow-list,
// limits, key generation), and a new key generation makes the sidecar
// rotate its key without a failed request.
package sidecar

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/proxy"
	"github.com/plinth-platform/plinth/internal/ratelimit"
)

// Config configures a sidecar.
type Config struct {
	// Service is the name of the service this sidecar fronts.
	Service string
	// Credential is the service's registration credential.
	Credential string
	// ControlURL is the control plane's API.
	ControlURL string
	// Upstream is the service's own address (http://127.0.0.1:8081).
	Upstream string
	// Ingress, Egress and Admin are listen addresses: callers reach the
	// service at Ingress; the service calls others through Egress (keep it
	// on loopback); Admin serves /metrics and health.
	Ingress, Egress, Admin string
	// Advertise is the URL others reach the ingress at (default: derived
	// from the ingress listener).
	Advertise string
	// ClientOnly runs no listeners and fronts no service: the sidecar only
	// registers a signing key and forwards calls made in process through
	// Forward (the edge works so). Upstream is not needed; Advertise is.
	ClientOnly bool
	// KeyAlg is the signing algorithm (ES256 by default).
	KeyAlg auth.Alg
	// TokenLifetime of minted tokens (60s by default).
	TokenLifetime time.Duration
	// Redis, when set, holds rate limits and replay records shared by the
	// service's replicas.
	Redis *redis.Client
	// RedisPrefix starts every key the sidecar keeps in Redis ("plinth:").
	RedisPrefix string
	// RateLimitFallback is what limits do when Redis fails (local by default).
	RateLimitFallback ratelimit.Fallback
	// TryTimeout bounds each outbound attempt (5s); MaxAttempts bounds
	// attempts per outbound request (3).
	TryTimeout  time.Duration
	MaxAttempts int
	// EjectAfter consecutive failures eject an instance for EjectFor.
	EjectAfter int
	EjectFor   time.Duration
	// HeartbeatInterval is how often the sidecar reports in (5s).
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	Registry          *prometheus.Registry
	HTTP              *http.Client
}

// Sidecar is a running service proxy.
type Sidecar struct {
	cfg        Config
	log        *slog.Logger
	upstream   string // host:port
	instanceID uuid.UUID
	ctx        context.Context
	cancel     context.CancelFunc

	service  atomic.Pointer[catalog.Service]
	minter   *auth.Minter
	keyGen   atomic.Int64
	verifier *auth.Verifier
	limiter  ratelimit.Limiter
	targets  sync.Map // service name -> *target
	budget   *retryBudget
	metrics  *metrics

	ingress, egress, admin     net.Listener
	ingressSrv, egressSrv      *proxy.Server
	adminSrv                   *http.Server
	heartbeatDone, serversDone chan struct{}
	registered                 atomic.Bool
}

// New returns a Sidecar; Start runs it.
func New(cfg Config) (*Sidecar, error) {
	if err := catalog.ValidateName("service", cfg.Service); err != nil {
		return nil, err
	}
	if cfg.Credential == "" || cfg.ControlURL == "" {
		return nil, errors.New("sidecar: a registration credential and the control plane's URL are required")
	}
	u, err := url.Parse(cfg.Upstream)
	if cfg.ClientOnly {
		u, err = &url.URL{}, nil
		if cfg.Advertise == "" {
			return nil, errors.New("sidecar: a client-only sidecar needs the URL it is reached at (Advertise)")
		}
	} else if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("sidecar: --upstream must be an http:// URL of the service, not %q", cfg.Upstream)
	}
	cfg.KeyAlg = cmp.Or(cfg.KeyAlg, auth.ES256)
	cfg.TryTimeout = cmp.Or(cfg.TryTimeout, 5*time.Second)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, 3)
	cfg.EjectAfter = cmp.Or(cfg.EjectAfter, 3)
	cfg.EjectFor = cmp.Or(cfg.EjectFor, 30*time.Second)
	cfg.HeartbeatInterval = cmp.Or(cfg.HeartbeatInterval, api.HeartbeatInterval)
	cfg.RateLimitFallback = cmp.Or(cfg.RateLimitFallback, ratelimit.FallbackLocal)
	cfg.RedisPrefix = cmp.Or(cfg.RedisPrefix, "plinth:")
	cfg.Ingress = cmp.Or(cfg.Ingress, "127.0.0.1:0")
	cfg.Egress = cmp.Or(cfg.Egress, "127.0.0.1:0")
	cfg.Admin = cmp.Or(cfg.Admin, "127.0.0.1:0")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 40 * time.Second}
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger.With("service", cfg.Service), upstream: u.Host,
		instanceID: uuid.Must(uuid.NewV7()), budget: newRetryBudget(0.1, 5)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.service.Store(&catalog.Service{Name: cfg.Service})

	var replay auth.ReplayStore = auth.NewMemoryReplay(nil)
	s.limiter = ratelimit.NewLocal(0)
	if cfg.Redis != nil {
		replay = auth.NewRedisReplay(cfg.Redis, cfg.RedisPrefix, nil)
		s.limiter = ratelimit.NewShared(cfg.Redis, cfg.RedisPrefix+"rl:"+cfg.Service+":", cfg.RateLimitFallback)
	}
	s.verifier = auth.NewVerifier(auth.VerifierConfig{
		Audience:    cfg.Service,
		Keys:        auth.NewRepository(auth.RepositoryConfig{BaseURL: cfg.ControlURL}),
		Replay:      replaySwitch{store: replay, on: func() bool { return s.service.Load().ReplayProtection }},
		AllowIssuer: s.allowed,
	})
	s.metrics = newMetrics(cfg.Registry, s)
	return s, nil
}

// replaySwitch applies replay protection only while the service has it on.
type replaySwitch struct {
	store auth.ReplayStore
	on    func() bool
}

func (r replaySwitch) Seen(ctx context.Context, audience, jti string, until time.Time) (bool, error) {
	if !r.on() {
		return false, nil
	}
	return r.store.Seen(ctx, audience, jti, until)
}

func (s *Sidecar) allowed(issuer string) bool {
	for _, c := range s.service.Load().AllowedCallers {
		if c == issuer {
			return true
		}
	}
	return false
}

// Start makes a key, registers with the control plane, and starts serving.
func (s *Sidecar) Start(ctx context.Context) error {
	var err error
	if s.ingress, err = net.Listen("tcp", s.cfg.Ingress); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	if s.egress, err = net.Listen("tcp", s.cfg.Egress); err != nil {
		s.ingress.Close()
		return fmt.Errorf("egress: %w", err)
	}
	if s.admin, err = net.Listen("tcp", s.cfg.Admin); err != nil {
		s.ingress.Close()
		s.egress.Close()
		return fmt.Errorf("admin: %w", err)
	}
	key, err := s.newKey(1)
	if err != nil {
		return err
	}
	if s.minter, err = auth.NewMinter(s.cfg.Service, key, s.cfg.TokenLifetime, nil); err != nil {
		return err
	}
	if err := s.register(ctx); err != nil {
		s.ingress.Close()
		s.egress.Close()
		s.admin.Close()
		return err
	}
	s.ingressSrv = &proxy.Server{Handler: s.inbound, Observe: s.metrics.observe("inbound"), Logger: s.log}
	s.egressSrv = &proxy.Server{Handler: s.outbound, Observe: s.metrics.observe("outbound"), Logger: s.log}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.registered.Load() {
			http.Error(w, "not registered", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	if os.Getenv("PLINTH_PPROF") == "1" {
		// Opt-in profiling on the admin listener (loopback by default).
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/heap", pprof.Index)
	}
	s.adminSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.serversDone = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = s.ingressSrv.Serve(s.ingress) }()
	go func() { defer wg.Done(); _ = s.egressSrv.Serve(s.egress) }()
	go func() { defer wg.Done(); _ = s.adminSrv.Serve(s.admin) }()
	go func() { wg.Wait(); close(s.serversDone) }()
	s.heartbeatDone = make(chan struct{})
	go s.heartbeats()
	s.log.Info("sidecar serving", "ingress", s.IngressAddr(), "egress", s.EgressAddr(), "admin", s.AdminAddr(),
		"upstream", s.cfg.Upstream, "kid", s.minter.Key().Kid)
	return nil
}

// StartClient starts a client-only sidecar: it makes a key, registers
// (so the key reaches the repository) and keeps heartbeating; calls go
// through Forward.
func (s *Sidecar) StartClient(ctx context.Context) error {
	if !s.cfg.ClientOnly {
		return errors.New("sidecar: StartClient needs Config.ClientOnly")
	}
	key, err := s.newKey(1)
	if err != nil {
		return err
	}
	if s.minter, err = auth.NewMinter(s.cfg.Service, key, s.cfg.TokenLifetime, nil); err != nil {
		return err
	}
	if err := s.register(ctx); err != nil {
		return err
	}
	s.heartbeatDone = make(chan struct{})
	go s.heartbeats()
	s.log.Info("client sidecar registered", "kid", s.minter.Key().Kid)
	return nil
}

// IngressAddr, EgressAddr and AdminAddr are the listeners' addresses.
func (s *Sidecar) IngressAddr() string { return s.ingress.Addr().String() }
func (s *Sidecar) EgressAddr() string  { return s.egress.Addr().String() }
func (s *Sidecar) AdminAddr() string   { return s.admin.Addr().String() }

// Stop deregisters (so callers stop picking this instance), then drains:
// requests in flight finish within ctx.
func (s *Sidecar) Stop(ctx context.Context) error {
	s.cancel()
	<-s.heartbeatDone
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := s.control(dctx, "DELETE", "/instances/"+s.instanceID.String(), nil, nil); err != nil {
		s.log.Warn("deregister", "error", err)
	}
	cancel()
	if s.cfg.ClientOnly {
		return nil
	}
	errs := []error{s.ingressSrv.Shutdown(ctx), s.egressSrv.Shutdown(ctx), s.adminSrv.Shutdown(ctx)}
	<-s.serversDone
	return errors.Join(errs...)
}

// newKey makes a signing key of generation gen, named after the instance.
func (s *Sidecar) newKey(gen int) (*auth.PrivateKey, error) {
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	kid := fmt.Sprintf("%s/%s-%s-g%d", s.cfg.Service, s.instanceID.String()[:8], hex.EncodeToString(suffix), gen)
	return auth.GenerateKey(s.cfg.KeyAlg, kid)
}

func (s *Sidecar) advertise() string {
	if s.cfg.Advertise != "" {
		return s.cfg.Advertise
	}
	return "http://" + s.ingress.Addr().String()
}

// register registers the instance and its key, retrying while the control
// plane is starting (up to 30 seconds or ctx).
func (s *Sidecar) register(ctx context.Context) error {
	req := api.RegisterInstanceRequest{ID: s.instanceID, Address: s.advertise(), Kid: s.minter.Key().Kid,
		PublicKey: string(s.minter.Key().Public().PEM())}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var resp api.InstanceResponse
		err := s.control(ctx, "POST", "/instances", req, &resp)
		if err == nil {
			s.applyConfig(&resp.Service)
			s.keyGen.Store(int64(max(resp.Service.KeyGeneration, 1)))
			s.registered.Store(true)
			return nil
		}
		var p *api.Problem
		if errors.As(err, &p) && p.Status < 500 {
			return fmt.Errorf("register with the control plane: %w", err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("register with the control plane at %s: %w", s.cfg.ControlURL, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (s *Sidecar) applyConfig(svc *catalog.Service) {
	c := *svc
	s.service.Store(&c)
}

// heartbeats reports in every interval, learns configuration changes,
// re-registers when the control plane forgot the instance, and rotates the
// key when the service's key generation grows.
func (s *Sidecar) heartbeats() {
	defer close(s.heartbeatDone)
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if err := s.heartbeat(); err != nil {
			s.log.Warn("heartbeat", "error", err)
		}
	}
}

func (s *Sidecar) heartbeat() error {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	var resp api.InstanceResponse
	err := s.control(ctx, "POST", "/instances/"+s.instanceID.String()+"/heartbeat", nil, &resp)
	if api.IsCode(err, "instance_not_found") {
		s.log.Warn("the control plane forgot this instance; registering again")
		return s.register(ctx)
	}
	if err != nil {
		return err // keep serving with the configuration we have
	}
	s.applyConfig(&resp.Service)
	if gen := int64(resp.Service.KeyGeneration); gen > s.keyGen.Load() {
		return s.rotate(ctx, int(gen))
	}
	return nil
}

// Rotate makes a new key now (also what a key-generation bump triggers).
func (s *Sidecar) Rotate(ctx context.Context) error {
	return s.rotate(ctx, int(s.keyGen.Load())+1)
}

// rotate publishes a new key and only then signs with it: a verifier that
// meets the new kid finds it in the repository. Tokens signed with the old
// key stay valid until they expire; the repository keeps the old key that long.
func (s *Sidecar) rotate(ctx context.Context, gen int) error {
	key, err := s.newKey(gen)
	if err != nil {
		return err
	}
	req := api.PublishKeyRequest{Kid: key.Kid, PublicKey: string(key.Public().PEM())}
	if err := s.control(ctx, "POST", "/instances/"+s.instanceID.String()+"/keys", req, nil); err != nil {
		return fmt.Errorf("publish the new key: %w", err)
	}
	if err := s.minter.Rotate(key); err != nil {
		return err
	}
	s.keyGen.Store(int64(gen))
	s.log.Info("rotated signing key", "kid", key.Kid)
	return nil
}

// control calls the service's endpoints of the control API with the
// registration credential.
func (s *Sidecar) control(ctx context.Context, method, path string, body, out any) error {
	return s.controlURL(ctx, method, "/v1/services/"+s.cfg.Service+path, body, out)
}

func (s *Sidecar) controlURL(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(s.cfg.ControlURL, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.cfg.Credential)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.cfg.HTTP.Do(req)
	if err != nil {
		return &api.Problem{Status: 503, Code: "control_unreachable", Detail: err.Error()}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		p := &api.Problem{Status: resp.StatusCode, Code: "http_error", Detail: resp.Status}
		_ = json.Unmarshal(data, p)
		return p
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}
