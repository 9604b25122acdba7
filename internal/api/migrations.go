package api

import (
	"net/http"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// MigrateRequest is the body of POST /v1/products/{name}/migrations.
type MigrateRequest struct {
	// To is the target version (0 or absent: the product's current one).
	To int64 `json:"to,omitempty"`
	// Concurrency is how many tenant databases migrate at once (4).
	Concurrency int `json:"concurrency,omitempty"`
	// Canary is how many tenants migrate first, alone (1); nil means 1.
	Canary *int `json:"canary,omitempty"`
	// MaxFailureRatio stops the run once more than this share of tenants
	// failed (0.1); nil means 0.1.
	MaxFailureRatio *float64 `json:"max_failure_ratio,omitempty"`
}

// Defaults of a migration run.
const (
	MigrateConcurrencyDefault = 4
	MigrateCanaryDefault      = 1
	MigrateMaxFailureDefault  = 0.1
)

// MigrationRunResponse is a run and its failed tasks (the first 100).
type MigrationRunResponse struct {
	Run    catalog.MigrationRun    `json:"run"`
	Failed []catalog.MigrationTask `json:"failed"`
}

func (s *Server) startMigration(w http.ResponseWriter, r *http.Request) error {
	var req MigrateRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	p := catalog.CreateRunParams{Product: r.PathValue("name"), To: req.To, Concurrency: req.Concurrency,
		Canary: MigrateCanaryDefault, MaxFailureRatio: MigrateMaxFailureDefault, Actor: ActorAdmin, RequestID: requestID(r)}
	if p.Concurrency == 0 {
		p.Concurrency = MigrateConcurrencyDefault
	}
	if req.Canary != nil {
		p.Canary = *req.Canary
	}
	if req.MaxFailureRatio != nil {
		p.MaxFailureRatio = *req.MaxFailureRatio
	}
	run, err := s.cfg.Service.StartMigration(r.Context(), s.store(r), p)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/migrations/"+run.ID.String())
	return writeJSON(w, http.StatusAccepted, MigrationRunResponse{Run: run, Failed: []catalog.MigrationTask{}})
}

func (s *Server) listMigrations(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.store(r).GetProduct(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	runs, err := s.store(r).ListMigrationRuns(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.MigrationRun]{Items: runs})
}

func (s *Server) runID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return uuid.Nil, catalog.NotFound("migration_run_not_found", "migration run %q does not exist", truncate(r.PathValue("id"), 40))
	}
	return id, nil
}

func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) error {
	id, err := s.runID(r)
	if err != nil {
		return err
	}
	run, err := s.store(r).GetMigrationRun(r.Context(), id)
	if err != nil {
		return err
	}
	failed, err := s.store(r).MigrationTasks(r.Context(), id, "failed", 100)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, MigrationRunResponse{Run: run, Failed: failed})
}

func (s *Server) pauseMigration(w http.ResponseWriter, r *http.Request) error {
	id, err := s.runID(r)
	if err != nil {
		return err
	}
	run, err := s.cfg.Service.PauseMigration(r.Context(), s.store(r), id, ActorAdmin)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, MigrationRunResponse{Run: run, Failed: []catalog.MigrationTask{}})
}

func (s *Server) resumeMigration(w http.ResponseWriter, r *http.Request) error {
	id, err := s.runID(r)
	if err != nil {
		return err
	}
	run, err := s.cfg.Service.ResumeMigration(r.Context(), s.store(r), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, MigrationRunResponse{Run: run, Failed: []catalog.MigrationTask{}})
}
