package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
)

// DrillRequest is the body of POST /v1/drills.
type DrillRequest struct {
	// Sample is how many tenants to drill, those drilled least recently
	// first (1 to 10000; default 10). All drills every restorable tenant.
	Sample int  `json:"sample,omitempty"`
	All    bool `json:"all,omitempty"`
}

// DrillList is the answer of GET /v1/drills.
type DrillList struct {
	Items []catalog.Drill `json:"items"`
}

// DrillReport is the answer of GET /v1/drill-report: how the drills cover
// the restorable tenants, per tier, and who is overdue.
type DrillReport struct {
	WindowDays int                     `json:"window_days"`
	Tiers      []catalog.DrillTier     `json:"tiers"`
	Overdue    []catalog.OverdueTenant `json:"overdue"`
}

// drillReportLimit bounds the overdue tenants one report lists.
const drillReportLimit = 1000

func (s *Server) startDrill(w http.ResponseWriter, r *http.Request) error {
	var req DrillRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	var sample *int
	switch {
	case req.All && req.Sample != 0:
		return catalog.Invalid("invalid_sample", "give a sample or all, not both")
	case !req.All:
		n := req.Sample
		if n == 0 {
			n = provision.DrillSampleDefault
		}
		if n < 1 || n > catalog.MaxDrillSample {
			return catalog.Invalid("invalid_sample", "a drill samples 1 to %d tenants, or all", catalog.MaxDrillSample)
		}
		sample = &n
	}
	d, err := s.cfg.Service.StartDrill(r.Context(), s.store(r), sample, ActorAdmin)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/drills/"+d.ID.String())
	return writeJSON(w, http.StatusAccepted, d)
}

func (s *Server) listDrills(w http.ResponseWriter, r *http.Request) error {
	ds, err := s.store(r).ListDrills(r.Context(), 20)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, DrillList{Items: ds})
}

func (s *Server) getDrill(w http.ResponseWriter, r *http.Request) error {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return catalog.NotFound("drill_not_found", "drill %q does not exist", truncate(r.PathValue("id"), 40))
	}
	d, err := s.store(r).GetDrill(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

func (s *Server) drillReport(w http.ResponseWriter, r *http.Request) error {
	window := provision.DrillOverdueDefault
	tiers, overdue, err := s.store(r).DrillReport(r.Context(), window, drillReportLimit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, DrillReport{WindowDays: int(window / (24 * time.Hour)), Tiers: tiers, Overdue: overdue})
}

// StartDrill asks for a drill.
func (c *Client) StartDrill(ctx context.Context, req DrillRequest) (catalog.Drill, error) {
	var out catalog.Drill
	return out, c.Do(ctx, "POST", "/v1/drills", req, &out)
}

// GetDrill returns a drill and its results.
func (c *Client) GetDrill(ctx context.Context, id uuid.UUID) (catalog.Drill, error) {
	var out catalog.Drill
	return out, c.Do(ctx, "GET", fmt.Sprintf("/v1/drills/%s", id), nil, &out)
}

// ListDrills returns the newest drills.
func (c *Client) ListDrills(ctx context.Context) (DrillList, error) {
	var out DrillList
	return out, c.Do(ctx, "GET", "/v1/drills", nil, &out)
}

// GetDrillReport returns the drills' coverage and the overdue tenants.
func (c *Client) GetDrillReport(ctx context.Context) (DrillReport, error) {
	var out DrillReport
	return out, c.Do(ctx, "GET", "/v1/drill-report", nil, &out)
}

func (s *Server) verifyCatalog(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.cfg.Service.VerifyCatalog(r.Context(), s.store(r))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rep)
}

// VerifyCatalog compares the catalog with the shards.
func (c *Client) VerifyCatalog(ctx context.Context) (provision.CatalogReport, error) {
	var out provision.CatalogReport
	return out, c.Do(ctx, "POST", "/v1/catalog/verify", nil, &out)
}

// RebuildCatalogRequest asks to recreate what the catalog lost from the
// shards' tenant databases. FromShards must be true: the identity rows on
// the shards are the one source a rebuild has.
type RebuildCatalogRequest struct {
	FromShards bool `json:"from_shards"`
	DryRun     bool `json:"dry_run,omitempty"`
}

// rebuildCatalog is not under Idempotency-Key: a rebuild is idempotent by
// itself (a retry recreates nothing), and one transaction per tenant keeps
// a long rebuild from holding one transaction open.
func (s *Server) rebuildCatalog(w http.ResponseWriter, r *http.Request) error {
	var req RebuildCatalogRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if !req.FromShards {
		return catalog.Invalid("from_shards_required", "a rebuild reads the identity rows of the databases on the shards: set from_shards to true")
	}
	rep, err := s.cfg.Service.RebuildCatalog(r.Context(), s.store(r), provision.RebuildOptions{
		DryRun: req.DryRun, Actor: ActorAdmin, RequestID: requestID(r),
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rep)
}
