package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/provision"
)

// Defaults for new records.
const (
	ShardCapacityDefault = 5000
	TenantTierDefault    = 3 // the least critical tier, for tenants created without one
)

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) error {
	return writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

// readyz reports ready when the control database answers.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Store.Pool().Ping(ctx); err != nil {
		return writeJSON(w, http.StatusServiceUnavailable, Health{Status: "unavailable",
			Checks: map[string]string{"control_database": "unreachable"}})
	}
	return writeJSON(w, http.StatusOK, Health{Status: "ok", Checks: map[string]string{"control_database": "ok"}})
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	rs, err := s.store(r).ListRegions(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.Region]{Items: rs})
}

func (s *Server) createRegion(w http.ResponseWriter, r *http.Request) error {
	var req CreateRegionRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.EdgeURL != "" && !strings.HasPrefix(req.EdgeURL, "http://") && !strings.HasPrefix(req.EdgeURL, "https://") {
		return catalog.Invalid("invalid_edge_url", "edge_url must be an http(s) URL")
	}
	var region catalog.Region
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if region, err = tx.CreateRegion(r.Context(), catalog.Region{Name: req.Name, EdgeURL: req.EdgeURL}); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "region.add", TargetKind: "region",
			TargetID: region.Name, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, region)
}

func shardView(sh catalog.Shard) Shard { return Shard{Shard: sh, DSN: fleet.RedactDSN(sh.DSN)} }

// backupStatus is the scheduled backups' status by stanza.
func (s *Server) backupStatus(r *http.Request) (map[string]*catalog.BackupStatus, error) {
	list, err := s.store(r).ListBackupStatus(r.Context())
	if err != nil {
		return nil, err
	}
	out := make(map[string]*catalog.BackupStatus, len(list))
	for i := range list {
		out[list[i].Stanza] = &list[i]
	}
	return out, nil
}

func (s *Server) listShards(w http.ResponseWriter, r *http.Request) error {
	shards, err := s.store(r).ListShards(r.Context(), r.URL.Query().Get("region"))
	if err != nil {
		return err
	}
	status, err := s.backupStatus(r)
	if err != nil {
		return err
	}
	out := make([]Shard, len(shards))
	for i, sh := range shards {
		out[i] = shardView(sh)
		out[i].Backup = status[sh.Name]
	}
	return writeJSON(w, http.StatusOK, List[Shard]{Items: out})
}

func (s *Server) createShard(w http.ResponseWriter, r *http.Request) error {
	var req CreateShardRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Capacity == 0 {
		req.Capacity = ShardCapacityDefault
	}
	if err := catalog.ValidateName("shard", req.Name); err != nil {
		return err
	}
	if req.Capacity < 0 || req.Capacity > 1_000_000 {
		return catalog.Invalid("invalid_capacity", "capacity must be between 1 and 1000000 databases")
	}
	if req.Backups != "" && req.Backups != catalog.BackupsByPlinth && req.Backups != catalog.BackupsByProvider {
		return catalog.Invalid("invalid_backups", "backups must be %q or %q", catalog.BackupsByPlinth, catalog.BackupsByProvider)
	}
	if _, err := fleet.ParseDSN(req.DSN); err != nil {
		return err
	}
	if s.cfg.VerifyShard != nil {
		if err := s.cfg.VerifyShard(r.Context(), req.DSN); err != nil {
			return err
		}
	}
	var sh catalog.Shard
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		sh, err = tx.CreateShard(r.Context(), catalog.Shard{Name: req.Name, Region: req.Region, DSN: req.DSN, Capacity: req.Capacity,
			Backups: req.Backups})
		if err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "shard.add", TargetKind: "shard",
			TargetID: sh.Name, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, shardView(sh))
}

func (s *Server) getShard(w http.ResponseWriter, r *http.Request) error {
	sh, err := s.store(r).GetShard(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	status, err := s.backupStatus(r)
	if err != nil {
		return err
	}
	view := shardView(sh)
	view.Backup = status[sh.Name]
	return writeJSON(w, http.StatusOK, view)
}

// setShardBackups records who backs a shard up, with an audit entry.
func (s *Server) setShardBackups(w http.ResponseWriter, r *http.Request) error {
	var req ShardBackupsRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if len(req.Reason) > 1000 {
		return catalog.Invalid("invalid_reason", "reason must be at most 1000 characters")
	}
	var sh catalog.Shard
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if sh, err = tx.SetShardBackups(r.Context(), r.PathValue("name"), req.Backups); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "shard.backups", TargetKind: "shard",
			TargetID: sh.Name, ToState: req.Backups, Reason: req.Reason, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, shardView(sh))
}

func (s *Server) drainShard(draining bool) handlerFunc {
	action := "shard.undrain"
	if draining {
		action = "shard.drain"
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		var req ActionRequest
		if err := decode(r, &req, true); err != nil {
			return err
		}
		var sh catalog.Shard
		err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
			var err error
			if sh, err = tx.SetDraining(r.Context(), r.PathValue("name"), draining); err != nil {
				return err
			}
			return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: action, TargetKind: "shard",
				TargetID: sh.Name, Reason: req.Reason, RequestID: requestID(r)})
		})
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, shardView(sh))
	}
}

func (s *Server) listProducts(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.store(r).ListProducts(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.Product]{Items: ps})
}

func (s *Server) registerProduct(w http.ResponseWriter, r *http.Request) error {
	var req RegisterProductRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var resp ProductResponse
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		resp.Product, resp.Changed, err = tx.RegisterProduct(r.Context(), catalog.RegisterProductParams{
			Name: req.Name, Migrations: req.Migrations, WarmPoolSize: req.WarmPoolSize, Default: req.Default,
		})
		if err != nil || !resp.Changed {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "product.register", TargetKind: "product",
			TargetID: req.Name, ToState: "v" + strconv.FormatInt(resp.Product.CurrentVersion, 10), RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

func (s *Server) getProduct(w http.ResponseWriter, r *http.Request) error {
	p, err := s.store(r).GetProduct(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

func (s *Server) listWarmPools(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.store(r).ListWarmPools(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.WarmPool]{Items: ps})
}

func (s *Server) setWarmPool(w http.ResponseWriter, r *http.Request) error {
	var req SetWarmPoolRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var p catalog.WarmPool
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if p, err = tx.SetWarmPool(r.Context(), r.PathValue("shard"), r.PathValue("product"), req.Size); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "warm_pool.set", TargetKind: "warm_pool",
			TargetID: p.Shard + "/" + p.Product, ToState: strconv.Itoa(p.Size), RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := catalog.TenantFilter{
		State: catalog.TenantState(q.Get("state")), Region: q.Get("region"), Shard: q.Get("shard"), Product: q.Get("product"),
	}
	if c := q.Get("cursor"); c != "" {
		id, err := uuid.Parse(c)
		if err != nil {
			return catalog.Invalid("invalid_cursor", "cursor is not one this API returned")
		}
		f.After = id
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return catalog.Invalid("invalid_limit", "limit must be a number")
		}
		f.Limit = n
	}
	ts, next, err := s.store(r).ListTenants(r.Context(), f)
	if err != nil {
		return err
	}
	out := List[catalog.Tenant]{Items: ts}
	if next != uuid.Nil {
		out.NextCursor = next.String()
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) createTenant(w http.ResponseWriter, r *http.Request) error {
	var req CreateTenantRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	tier := TenantTierDefault
	if req.Tier != nil {
		tier = *req.Tier
	}
	t, op, err := s.cfg.Service.CreateTenant(r.Context(), s.store(r), provision.CreateRequest{
		CreateTenantParams: catalog.CreateTenantParams{
			Slug: req.Slug, DisplayName: req.DisplayName, Region: req.Region, Tier: tier, Products: req.Products,
		},
		Actor: ActorAdmin, RequestID: requestID(r),
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/operations/"+op.ID.String())
	return writeJSON(w, http.StatusAccepted, TenantResponse{Tenant: t, Operation: &op})
}

func (s *Server) getTenant(w http.ResponseWriter, r *http.Request) error {
	t, err := s.store(r).GetTenant(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, t)
}

func (s *Server) tenantAudit(w http.ResponseWriter, r *http.Request) error {
	t, err := s.store(r).GetTenant(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	entries, err := s.store(r).ListAudit(r.Context(), "tenant", t.ID.String(), 1000)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.AuditEntry]{Items: entries})
}

func (s *Server) tenantAction(a catalog.Action) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req ActionRequest
		if err := decode(r, &req, true); err != nil {
			return err
		}
		t, op, err := s.cfg.Service.Act(r.Context(), s.store(r), provision.ActRequest{
			Tenant: r.PathValue("ref"), Action: a, Reason: req.Reason, Actor: ActorAdmin, RequestID: requestID(r),
		})
		if err != nil {
			return err
		}
		if op != nil {
			w.Header().Set("Location", "/v1/operations/"+op.ID.String())
			return writeJSON(w, http.StatusAccepted, TenantResponse{Tenant: t, Operation: op})
		}
		return writeJSON(w, http.StatusOK, TenantResponse{Tenant: t})
	}
}

// getOperation returns an operation; with ?wait=<duration> (at most 60s) it
// answers as soon as the operation finishes or the wait ends.
func (s *Server) getOperation(w http.ResponseWriter, r *http.Request) error {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return catalog.NotFound("operation_not_found", "operation %q does not exist", truncate(r.PathValue("id"), 40))
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for {
		var done <-chan struct{}
		cancel := func() {}
		if s.cfg.Notifier != nil {
			done, cancel = s.cfg.Notifier.WaitOperation(id.String())
		}
		op, err := s.store(r).GetOperation(r.Context(), id)
		if err != nil || op.State != catalog.OperationRunning || time.Now().After(deadline) {
			cancel()
			if err != nil {
				return err
			}
			return writeJSON(w, http.StatusOK, op)
		}
		select {
		case <-done:
		case <-time.After(min(time.Until(deadline), time.Second)):
		case <-s.closing: // draining: answer with what is known now
			cancel()
			return writeJSON(w, http.StatusOK, op)
		case <-r.Context().Done():
			cancel()
			return r.Context().Err()
		}
		cancel()
	}
}

func (s *Server) listChanges(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	after, limit := int64(0), 100
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < 0 {
			return catalog.Invalid("invalid_after", "after must be a change-log version (a non-negative number)")
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 1000 {
			return catalog.Invalid("invalid_limit", "limit must be between 1 and 1000")
		}
	}
	cs, err := s.store(r).Changes(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.Change]{Items: cs})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
