// Package api is Plinth's control-plane HTTP API (REST and JSON under /v1,
// described by the OpenAPI document served at /openapi.json) and the Go
// client the CLI uses.
//
// Handlers return errors; one wrapper turns them into RFC 9457 problems with
// stable codes, writes the access log and counts requests. Every POST that
// creates or changes state honours Idempotency-Key. Requests need the admin
// bearer token except the health, metrics and OpenAPI endpoints.
package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/tenantctx"
)

// Limits on requests.
const (
	maxBodyBytes        = 64 << 10
	maxProductBodyBytes = 16 << 20
	maxWait             = 60 * time.Second
)

const (
	headerRequestID      = "X-Request-Id"
	headerIdempotencyKey = "Idempotency-Key"
	// ActorAdmin is the actor recorded for requests made with the admin token.
	ActorAdmin = "admin"
)

// Config configures the API server.
type Config struct {
	Store   *catalog.Store
	Service *provision.Service
	// AdminToken is the bearer token every /v1 request must carry.
	AdminToken string
	Logger     *slog.Logger
	// Registry collects the server's metrics; a new one when nil.
	Registry *prometheus.Registry
	// VerifyShard checks that a DSN reaches a usable shard (fleet.Verify).
	VerifyShard func(ctx context.Context, dsn string) error
	// Notifier wakes waiters on operations; operations are polled without it.
	Notifier *catalog.Notifier
	// Domains checks tenants' proofs of control of custom domains; domain
	// verification is refused without it.
	Domains DomainProver
	// Backups backs up the shards this control plane runs; /v1/backups
	// answers 404 without it.
	Backups Backups
}

// DomainProver checks that a domain publishes a tenant's token
// (domainproof.Prover does).
type DomainProver interface {
	Prove(ctx context.Context, domain, token string) error
}

// Server serves the control API.
type Server struct {
	cfg       Config
	tokenHash [32]byte
	log       *slog.Logger
	mux       *http.ServeMux
	routes    []route
	metrics   *metrics
	tenants   *tenantctx.Source
	closing   chan struct{}
	closeOnce sync.Once
}

// Shutdown ends the change-feed streams, so that a draining server does
// not wait on them (their readers reconnect, to another replica or to this
// one restarted). Register it with http.Server.RegisterOnShutdown.
func (s *Server) Shutdown() {
	s.closeOnce.Do(func() { close(s.closing) })
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// route is one endpoint. The OpenAPI test walks this table.
type route struct {
	method, path string
	handler      handlerFunc
	public       bool // no admin token needed (the handler may check a service credential)
	idempotent   bool // honours Idempotency-Key
	maxBody      int64
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Service == nil {
		return nil, errors.New("api: Store and Service are required")
	}
	if len(cfg.AdminToken) < 16 {
		return nil, errors.New("api: the admin token must be at least 16 characters")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, tokenHash: sha256.Sum256([]byte(cfg.AdminToken)), log: cfg.Logger, mux: http.NewServeMux(),
		tenants: tenantctx.NewSource(cfg.Store), closing: make(chan struct{})}
	s.metrics = newMetrics(cfg.Registry, cfg.Store)
	s.routes = s.routeTable()
	for _, rt := range s.routes {
		s.mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
	}
	return s, nil
}

func (s *Server) routeTable() []route {
	promHandler := promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{})
	rs := []route{
		{method: "GET", path: "/healthz", handler: s.healthz, public: true},
		{method: "GET", path: "/readyz", handler: s.readyz, public: true},
		{method: "GET", path: "/metrics", public: true, handler: func(w http.ResponseWriter, r *http.Request) error {
			promHandler.ServeHTTP(w, r)
			return nil
		}},
		{method: "GET", path: "/openapi.json", handler: serveOpenAPI, public: true},
		{method: "GET", path: "/v1/regions", handler: s.listRegions, public: true}, // edges read it with their credential
		{method: "POST", path: "/v1/regions", handler: s.createRegion, idempotent: true},
		{method: "GET", path: "/v1/shards", handler: s.listShards},
		{method: "POST", path: "/v1/shards", handler: s.createShard, idempotent: true},
		{method: "GET", path: "/v1/shards/{name}", handler: s.getShard},
		{method: "POST", path: "/v1/shards/{name}/drain", handler: s.drainShard(true), idempotent: true},
		{method: "POST", path: "/v1/shards/{name}/undrain", handler: s.drainShard(false), idempotent: true},
		{method: "POST", path: "/v1/shards/{name}/backups", handler: s.setShardBackups, idempotent: true},
		{method: "GET", path: "/v1/products", handler: s.listProducts},
		{method: "POST", path: "/v1/products", handler: s.registerProduct, idempotent: true, maxBody: maxProductBodyBytes},
		{method: "GET", path: "/v1/products/{name}", handler: s.getProduct},
		{method: "GET", path: "/v1/products/{name}/migrations", handler: s.listMigrations},
		{method: "POST", path: "/v1/products/{name}/migrations", handler: s.startMigration, idempotent: true},
		{method: "GET", path: "/v1/migrations/{id}", handler: s.getMigration},
		{method: "POST", path: "/v1/migrations/{id}/pause", handler: s.pauseMigration, idempotent: true},
		{method: "POST", path: "/v1/migrations/{id}/resume", handler: s.resumeMigration, idempotent: true},
		{method: "GET", path: "/v1/backups", handler: s.listBackups},
		{method: "POST", path: "/v1/backups", handler: s.runBackup},
		{method: "GET", path: "/v1/backups/runs/{id}", handler: s.getBackupRun},
		{method: "POST", path: "/v1/backups/verify", handler: s.verifyBackups},
		{method: "POST", path: "/v1/restores", handler: s.startRestore, idempotent: true},
		{method: "GET", path: "/v1/restores/{id}", handler: s.getRestore},
		{method: "POST", path: "/v1/drills", handler: s.startDrill, idempotent: true},
		{method: "GET", path: "/v1/drills", handler: s.listDrills},
		{method: "GET", path: "/v1/drills/{id}", handler: s.getDrill},
		{method: "GET", path: "/v1/drill-report", handler: s.drillReport},
		{method: "POST", path: "/v1/catalog/verify", handler: s.verifyCatalog},
		{method: "POST", path: "/v1/catalog/rebuild", handler: s.rebuildCatalog},
		{method: "GET", path: "/v1/warm-pools", handler: s.listWarmPools},
		{method: "PUT", path: "/v1/warm-pools/{shard}/{product}", handler: s.setWarmPool},
		{method: "GET", path: "/v1/tenants", handler: s.listTenants},
		{method: "POST", path: "/v1/tenants", handler: s.createTenant, idempotent: true},
		{method: "GET", path: "/v1/tenants/{ref}", handler: s.getTenant},
		{method: "GET", path: "/v1/tenants/{ref}/audit", handler: s.tenantAudit},
		{method: "GET", path: "/v1/operations/{id}", handler: s.getOperation},
		{method: "GET", path: "/v1/changes", handler: s.listChanges},
		{method: "GET", path: "/v1/services", handler: s.listServices},
		{method: "POST", path: "/v1/services", handler: s.createService, idempotent: true},
		{method: "GET", path: "/v1/services/{name}", handler: s.getService},
		{method: "PUT", path: "/v1/services/{name}", handler: s.updateService},
		{method: "POST", path: "/v1/services/{name}/rotate-keys", handler: s.rotateKeys, idempotent: true},
		{method: "POST", path: "/v1/services/{name}/instances", handler: s.registerInstance, public: true},
		{method: "POST", path: "/v1/services/{name}/instances/{id}/heartbeat", handler: s.heartbeat, public: true},
		{method: "POST", path: "/v1/services/{name}/instances/{id}/keys", handler: s.publishKey, public: true},
		{method: "DELETE", path: "/v1/services/{name}/instances/{id}", handler: s.deregisterInstance, public: true},
		{method: "GET", path: "/v1/services/{name}/endpoints", handler: s.endpoints, public: true},
		{method: "GET", path: "/v1/keys/{issuer}", handler: s.issuerKeys, public: true},
		{method: "GET", path: "/v1/keys/{issuer}/{keyname}", handler: s.publicKey, public: true},
		{method: "GET", path: "/v1/routes", handler: s.listRoutes, public: true},
		{method: "GET", path: "/v1/tenant-context/by-slug/{slug}", handler: s.contextBySlug, public: true},
		{method: "GET", path: "/v1/tenant-context/by-id/{id}", handler: s.contextByID, public: true},
		{method: "GET", path: "/v1/tenant-context/by-domain/{domain}", handler: s.contextByDomain, public: true},
		{method: "GET", path: "/v1/tenant-context/snapshot", handler: s.contextSnapshot, public: true},
		{method: "GET", path: "/v1/tenant-context/changes", handler: s.contextChanges, public: true},
		{method: "GET", path: "/v1/tenants/{ref}/domains", handler: s.listDomains},
		{method: "POST", path: "/v1/tenants/{ref}/domains", handler: s.addDomain, idempotent: true},
		{method: "POST", path: "/v1/tenants/{ref}/domains/{domain}/verify", handler: s.verifyDomain, idempotent: true},
		{method: "DELETE", path: "/v1/tenants/{ref}/domains/{domain}", handler: s.removeDomain},
	}
	for _, a := range catalog.Actions {
		rs = append(rs, route{method: "POST", path: "/v1/tenants/{ref}/" + string(a), handler: s.tenantAction(a), idempotent: true})
	}
	return rs
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := s.mux.Handler(r); pattern == "" {
			s.notRouted(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// notRouted answers requests no route matches: 405 when the path exists
// with another method, 404 otherwise, as problems.
func (s *Server) notRouted(w http.ResponseWriter, r *http.Request) {
	setRequestID(w, r)
	var allowed []string
	for _, m := range []string{"GET", "POST", "PUT", "DELETE", "PATCH"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "" {
			allowed = append(allowed, m)
		}
	}
	status, code, msg := http.StatusNotFound, "not_found", "no such endpoint"
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		status, code, msg = http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed here"
	}
	s.metrics.requests.WithLabelValues("unrouted", r.Method, strconv.Itoa(status)).Inc()
	writeProblem(w, r, &Problem{Status: status, Code: code, Detail: msg})
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._\-]{1,128}$`)

// setRequestID takes the client's X-Request-Id when it is well formed, or
// makes one, and echoes it.
func setRequestID(w http.ResponseWriter, r *http.Request) string {
	id := r.Header.Get(headerRequestID)
	if !requestIDPattern.MatchString(id) {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		id = hex.EncodeToString(b)
	}
	w.Header().Set(headerRequestID, id)
	return id
}

type ctxKey int

const (
	ctxRequestID ctxKey = iota
	ctxStore
)

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(ctxRequestID).(string)
	return id
}

// store returns the catalog store for the request: bound to the
// idempotency transaction when the request carries a key.
func (s *Server) store(r *http.Request) *catalog.Store {
	if st, ok := r.Context().Value(ctxStore).(*catalog.Store); ok {
		return st
	}
	return s.cfg.Store
}

// wrap is the one place where requests are authenticated, bodies bounded,
// errors turned into problems, and requests logged and counted.
func (s *Server) wrap(rt route) http.Handler {
	maxBody := rt.maxBody
	if maxBody == 0 {
		maxBody = maxBodyBytes
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := setRequestID(w, r)
		r = r.WithContext(context.WithValue(r.Context(), ctxRequestID, id))
		rec := &statusRecorder{ResponseWriter: w}
		err := func() (err error) {
			defer func() {
				if v := recover(); v != nil {
					err = fmt.Errorf("panic: %v\n%s", v, debug.Stack())
				}
			}()
			if !rt.public {
				if err := s.authenticate(r); err != nil {
					return err
				}
			}
			r.Body = http.MaxBytesReader(rec, r.Body, maxBody)
			if rt.idempotent && r.Header.Get(headerIdempotencyKey) != "" {
				return s.idempotent(rec, r, rt.handler)
			}
			return rt.handler(rec, r)
		}()
		if err != nil && r.Context().Err() != nil && errors.Is(err, context.Canceled) {
			err, rec.status = nil, 499 // the client went away (a long poll given up): nothing to answer, nothing wrong
		}
		if err != nil {
			p, internal := problemFor(err)
			if !rec.wrote {
				writeProblem(rec, r, p)
			}
			if internal {
				s.log.Error("request failed", "request_id", id, "method", r.Method, "path", r.URL.Path, "error", err)
			}
		}
		s.metrics.observe(rt.path, r.Method, rec.status, time.Since(start))
		s.log.Info("request", "request_id", id, "method", r.Method, "path", r.URL.Path, "route", rt.path,
			"status", rec.status, "duration_ms", float64(time.Since(start).Microseconds())/1000)
	})
}

// authenticate checks the admin bearer token in constant time.
func (s *Server) authenticate(r *http.Request) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errorf(http.StatusUnauthorized, "token_missing", "this endpoint needs the admin token: Authorization: Bearer <token>")
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return errorf(http.StatusUnauthorized, "token_malformed", "the Authorization header must be 'Bearer <token>'")
	}
	sum := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(sum[:], s.tokenHash[:]) != 1 {
		return errorf(http.StatusUnauthorized, "token_invalid", "the token is not valid")
	}
	return nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// decode reads a JSON request body into v: one object, no unknown fields,
// within the route's size limit. An empty body is allowed when optional.
func decode(r *http.Request, v any, optional bool) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return errorf(http.StatusUnsupportedMediaType, "unsupported_media_type", "the body must be application/json")
		}
	}
	body, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the body is larger than %d bytes", tooBig.Limit)
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "bad_body", "could not read the body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return errorf(http.StatusBadRequest, "invalid_json", "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "invalid_json", "the body is not valid JSON for this request: %s", jsonErrorText(err))
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "invalid_json", "the body must hold exactly one JSON object")
	}
	return nil
}

// jsonErrorText keeps decoder errors short and free of echoed input.
func jsonErrorText(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fmt.Sprintf("field %q must be %s", typeErr.Field, typeErr.Type)
	}
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	return msg
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// encodeJSON writes v with 200 and the headers the handler set.
func encodeJSON(w http.ResponseWriter, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// Routes lists the endpoints the server handles, as "METHOD /path".
func Routes() []string {
	s := &Server{cfg: Config{Registry: prometheus.NewRegistry()}}
	var out []string
	for _, rt := range s.routeTable() {
		out = append(out, rt.method+" "+rt.path)
	}
	return out
}
