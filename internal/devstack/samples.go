package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/examples/tracker"
	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/fleet/localpg"
	"github.com/plinth-platform/plinth/internal/problem"
	"github.com/plinth-platform/plinth/internal/sidecar"
	"github.com/plinth-platform/plinth/sdk"
)

// The sample services plinth dev runs, each behind its own sidecar, and who
// may call them. plinth-dev is the identity `plinth dev call` speaks as.
var sampleServices = []catalog.ServiceParams{
	// The tracker takes every path the others do not (the edge picks the
	// longest matching prefix).
	{Name: "tracker", AllowedCallers: []string{"edge", DevCaller}, Routes: []string{"/"}, Product: tracker.Product},
	{Name: "notes", AllowedCallers: []string{"edge", DevCaller}, Routes: []string{"/notes", "/echo"}, Product: SampleProduct},
	{Name: "echo", AllowedCallers: []string{"notes", DevCaller}},
	{Name: DevCaller, AllowedCallers: []string{}},
	{Name: "edge", AllowedCallers: []string{}},
}

// DevCaller is the service identity of `plinth dev call`.
const DevCaller = "plinth-dev"

const servicesFile = "services.json"

// Sample is where one sample service runs.
type Sample struct {
	App     string `json:"app,omitempty"`
	Ingress string `json:"ingress"`
	Egress  string `json:"egress"`
}

// samples runs the sample services.
type samples struct {
	sidecars []*sidecar.Sidecar
	apps     []*http.Server
	notes    *notesApp
	tracker  *sdk.App
	where    map[string]Sample
}

// ensureServices registers the sample services and returns their
// registration credentials, kept in PLINTH_HOME/services.json (0600).
func ensureServices(ctx context.Context, store *catalog.Store, home string) (map[string]string, error) {
	path := filepath.Join(home, servicesFile)
	creds := map[string]string{}
	if data, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(data, &creds)
	}
	for _, p := range sampleServices {
		svc, err := store.GetService(ctx, p.Name)
		if err == nil && len(p.Routes) > 0 && len(svc.Routes) == 0 {
			// A stack made before the edge: give the sample its routes,
			// keeping what the operator allowed since.
			up := p
			up.AllowedCallers = append(append([]string{}, svc.AllowedCallers...), p.AllowedCallers...)
			up.CallerRateLimit, up.TenantRateLimit, up.ReplayProtection = svc.CallerRateLimit, svc.TenantRateLimit, svc.ReplayProtection
			if _, err := store.UpdateService(ctx, up); err != nil {
				return nil, err
			}
		}
		switch {
		case catalog.IsCode(err, "service_not_found"):
			creds[p.Name] = api.NewCredential(p.Name)
			if _, err := store.CreateService(ctx, p, catalog.HashCredential(creds[p.Name])); err != nil {
				return nil, err
			}
		case err != nil:
			return nil, err
		case creds[p.Name] == "":
			creds[p.Name] = api.NewCredential(p.Name) // the file was lost: issue a new one
			if err := store.SetCredential(ctx, p.Name, catalog.HashCredential(creds[p.Name])); err != nil {
				return nil, err
			}
		}
	}
	data, _ := json.MarshalIndent(creds, "", "  ")
	return creds, os.WriteFile(path, append(data, '\n'), 0o600)
}

// startSamples starts the tracker, notes and echo services and the sidecars
// of each and of plinth-dev. The tracker is a product like any other, on
// the SDK alone; it runs in this process only so that plinth dev stays one
// command. dbPassword is the shards' superuser password.
func startSamples(ctx context.Context, store *catalog.Store, controlURL string, creds map[string]string, dbPassword string, logger *slog.Logger) (_ *samples, err error) {
	s := &samples{where: map[string]Sample{}, notes: &notesApp{store: store, pools: fleet.NewPools(), dbs: map[uuid.UUID]*pgxpool.Pool{}}}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	serve := func(h http.Handler) (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		s.apps = append(s.apps, srv)
		go func() { _ = srv.Serve(l) }()
		return "http://" + l.Addr().String(), nil
	}
	start := func(name, upstream string) (*sidecar.Sidecar, error) {
		sc, err := sidecar.New(sidecar.Config{Service: name, Credential: creds[name], ControlURL: controlURL,
			Upstream: upstream, Logger: logger})
		if err != nil {
			return nil, err
		}
		if err := sc.Start(ctx); err != nil {
			return nil, fmt.Errorf("sidecar of %s: %w", name, err)
		}
		s.sidecars = append(s.sidecars, sc)
		s.where[name] = Sample{App: upstream, Ingress: sc.IngressAddr(), Egress: sc.EgressAddr()}
		return sc, nil
	}
	echoURL, err := serve(http.HandlerFunc(echo))
	if err != nil {
		return nil, err
	}
	if _, err := start("echo", echoURL); err != nil {
		return nil, err
	}
	s.tracker, err = sdk.New(sdk.Config{Service: "tracker", Product: tracker.Product, ControlURL: controlURL,
		Credential: creds["tracker"], DBUser: localpg.Superuser, DBPassword: dbPassword, Logger: logger.With("service", "tracker")})
	if err != nil {
		return nil, err
	}
	if err := s.tracker.Start(ctx); err != nil {
		return nil, err
	}
	th, err := tracker.Handler(s.tracker)
	if err != nil {
		return nil, err
	}
	trackerURL, err := serve(s.tracker.Handler(th))
	if err != nil {
		return nil, err
	}
	if _, err := start("tracker", trackerURL); err != nil {
		return nil, err
	}
	notesURL, err := serve(s.notes.handler())
	if err != nil {
		return nil, err
	}
	notesSC, err := start("notes", notesURL)
	if err != nil {
		return nil, err
	}
	s.notes.egress = notesSC.EgressAddr()
	// plinth-dev has no service of its own: nobody may call it, and its
	// upstream is never reached.
	if _, err := start(DevCaller, "http://127.0.0.1:9"); err != nil {
		return nil, err
	}
	w := s.where[DevCaller]
	w.App = ""
	s.where[DevCaller] = w
	return s, nil
}

func (s *samples) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, sc := range s.sidecars {
		_ = sc.Stop(ctx)
	}
	for _, a := range s.apps {
		_ = a.Shutdown(ctx)
	}
	s.notes.close()
	if s.tracker != nil {
		s.tracker.Close()
	}
}

// echo answers with what it was asked and who asked, as its sidecar told it.
func echo(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"service": "echo", "caller": r.Header.Get(sidecar.HeaderCaller),
		"tenant_id": r.Header.Get(sidecar.HeaderTenantID), "tenant_slug": r.Header.Get(sidecar.HeaderTenantSlug),
		"method": r.Method, "path": r.URL.RequestURI(), "body": string(body),
	})
}

// notesApp is the sample product's service: notes in the calling tenant's
// own database. (Product services get their database from the SDK; this
// sample, part of the platform, looks it up in the catalog.)
type notesApp struct {
	store  *catalog.Store
	pools  *fleet.Pools
	egress string
	mu     sync.Mutex
	dbs    map[uuid.UUID]*pgxpool.Pool
}

type note struct {
	ID        int64     `json:"id"`
	Body      string    `json:"body"`
	Author    string    `json:"author"`
	CreatedAt time.Time `json:"created_at"`
}

func (a *notesApp) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /notes", a.withTenant(a.list))
	mux.HandleFunc("POST /notes", a.withTenant(a.add))
	mux.HandleFunc("GET /echo", a.withTenant(a.callEcho))
	mux.HandleFunc("GET /{$}", a.withTenant(a.list))
	return mux
}

type tenantHandler func(w http.ResponseWriter, r *http.Request, t catalog.Tenant, db *pgxpool.Pool)

func fail(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	problem.Write(w, r, &problem.Problem{Status: status, Code: code, Detail: detail})
}

// withTenant finds the calling tenant (verified by the sidecar) and its
// notes database. A request without a tenant never gets a database.
func (a *notesApp) withTenant(h tenantHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := uuid.Parse(r.Header.Get(sidecar.HeaderTenantID))
		if err != nil {
			fail(w, r, http.StatusBadRequest, "tenant_required", "notes are per tenant: call with a tenant")
			return
		}
		t, db, err := a.db(r.Context(), id)
		if err != nil {
			fail(w, r, http.StatusServiceUnavailable, "tenant_unavailable", err.Error())
			return
		}
		h(w, r, t, db)
	}
}

func (a *notesApp) db(ctx context.Context, id uuid.UUID) (catalog.Tenant, *pgxpool.Pool, error) {
	t, err := a.store.GetTenantByID(ctx, id)
	if err != nil {
		return t, nil, err
	}
	if t.State != catalog.StateActive {
		return t, nil, fmt.Errorf("tenant %s is %s", t.Slug, t.State)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.dbs[id]; ok {
		return t, p, nil
	}
	for _, in := range t.Installations {
		if in.Product != SampleProduct || in.Database == "" {
			continue
		}
		sh, err := a.store.GetShard(ctx, in.Shard)
		if err != nil {
			return t, nil, err
		}
		conn, err := a.pools.Shard(sh)
		if err != nil {
			return t, nil, err
		}
		cfg, _ := pgxpool.ParseConfig("")
		cfg.ConnConfig = conn.ConnConfig(in.Database)
		cfg.MaxConns, cfg.MinConns, cfg.MaxConnIdleTime = 2, 0, 30*time.Second
		p, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), cfg)
		if err != nil {
			return t, nil, err
		}
		a.dbs[id] = p
		return t, p, nil
	}
	return t, nil, errors.New("tenant " + t.Slug + " does not have the notes product")
}

func (a *notesApp) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.dbs {
		p.Close()
	}
	a.pools.Close()
}

func (a *notesApp) list(w http.ResponseWriter, r *http.Request, t catalog.Tenant, db *pgxpool.Pool) {
	rows, err := db.Query(r.Context(), `SELECT id, body, author, created_at FROM notes ORDER BY created_at DESC LIMIT 100`)
	if err == nil {
		var notes []note
		notes, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (note, error) {
			var n note
			return n, row.Scan(&n.ID, &n.Body, &n.Author, &n.CreatedAt)
		})
		if err == nil {
			if notes == nil {
				notes = []note{}
			}
			writeJSON(w, http.StatusOK, map[string]any{"tenant": t.Slug, "notes": notes})
			return
		}
	}
	fail(w, r, http.StatusInternalServerError, "internal", "could not list notes")
}

func (a *notesApp) add(w http.ResponseWriter, r *http.Request, t catalog.Tenant, db *pgxpool.Pool) {
	var in struct {
		Body string `json:"body"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&in); err != nil || in.Body == "" || len(in.Body) > 10000 {
		fail(w, r, http.StatusUnprocessableEntity, "invalid_note", `send {"body": "…"} with 1 to 10000 characters`)
		return
	}
	var n note
	err := db.QueryRow(r.Context(), `INSERT INTO notes (body, author) VALUES ($1, $2) RETURNING id, body, author, created_at`,
		in.Body, r.Header.Get(sidecar.HeaderCaller)).Scan(&n.ID, &n.Body, &n.Author, &n.CreatedAt)
	if err != nil {
		fail(w, r, http.StatusInternalServerError, "internal", "could not add the note")
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"tenant": t.Slug, "note": n})
}

// callEcho calls the echo service through this service's sidecar, passing
// the tenant on: plain HTTP to the egress, no token in sight.
func (a *notesApp) callEcho(w http.ResponseWriter, r *http.Request, t catalog.Tenant, _ *pgxpool.Pool) {
	req, _ := http.NewRequestWithContext(r.Context(), "GET", "http://"+a.egress+"/echo/hello-from-notes", nil)
	for _, h := range []string{sidecar.HeaderTenantID, sidecar.HeaderTenantSlug, sidecar.HeaderRegion, "Traceparent"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail(w, r, http.StatusBadGateway, "echo_unreachable", err.Error())
		return
	}
	defer resp.Body.Close()
	var echoed any
	_ = json.NewDecoder(resp.Body).Decode(&echoed)
	writeJSON(w, http.StatusOK, map[string]any{"tenant": t.Slug, "echo_status": resp.StatusCode, "echo": echoed})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
