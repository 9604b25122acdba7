package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/domainproof"
	"github.com/plinth-platform/plinth/internal/tenantctx"
)

// feedHeartbeat is how often the change feed says it is alive.
const feedHeartbeat = 10 * time.Second

// DomainRequest is the body of POST /v1/tenants/{ref}/domains.
type DomainRequest struct {
	Domain string `json:"domain"`
}

// DomainResponse is a custom domain and how to prove control of it.
type DomainResponse struct {
	Domain     string     `json:"domain"`
	TenantID   uuid.UUID  `json:"tenant_id"`
	Token      string     `json:"token"`
	VerifiedAt *time.Time `json:"verified_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	// How to prove control (either will do).
	DNSRecord string `json:"dns_record"`
	HTTPURL   string `json:"http_url"`
}

func domainView(d catalog.Domain) DomainResponse {
	return DomainResponse{Domain: d.Domain, TenantID: d.TenantID, Token: d.Token, VerifiedAt: d.VerifiedAt, CreatedAt: d.CreatedAt,
		DNSRecord: "_plinth-challenge." + d.Domain + " TXT " + d.Token,
		HTTPURL:   "http://" + d.Domain + domainproof.ChallengePath + d.Token}
}

func (s *Server) contextBySlug(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	tc, err := s.tenants.BySlug(r.Context(), r.PathValue("slug"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, tc)
}

func (s *Server) contextByID(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return catalog.NotFound("tenant_not_found", "tenant %q does not exist", truncate(r.PathValue("id"), 40))
	}
	tc, err := s.tenants.ByID(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, tc)
}

func (s *Server) contextByDomain(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	d, err := catalog.NormalizeDomain(r.PathValue("domain"))
	if err != nil {
		return catalog.NotFound("tenant_not_found", "no tenant serves %q", truncate(r.PathValue("domain"), 60))
	}
	tc, err := s.tenants.ByDomain(r.Context(), d)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, tc)
}

func (s *Server) contextSnapshot(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	var after uuid.UUID
	if c := r.URL.Query().Get("cursor"); c != "" {
		var err error
		if after, err = uuid.Parse(c); err != nil {
			return catalog.Invalid("invalid_cursor", "cursor is not one this API returned")
		}
	}
	limit := 500
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			return catalog.Invalid("invalid_limit", "limit must be between 1 and 500")
		}
		limit = n
	}
	p, err := s.tenants.Snapshot(r.Context(), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

// contextChanges streams the change feed as server-sent events: every
// change after ?after=<version>, in commit order, then new ones as they
// commit, with a heartbeat every few seconds. A reader whose version was
// pruned gets a reset event: it must reload from the snapshot.
func (s *Server) contextChanges(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	if err != nil || after < 0 {
		return catalog.Invalid("invalid_after", "after must be a change-log version (a non-negative number)")
	}
	rc := http.NewResponseController(w)
	// The stream outlives the server's read timeout: without this the
	// server would end it (the reader reconnects, but needlessly).
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var beat time.Time // the stream opens with a sync, so the reader knows it is live
	for {
		var changed <-chan struct{}
		cancel := func() {}
		if s.cfg.Notifier != nil {
			changed, cancel = s.cfg.Notifier.WaitChange()
		}
		events, next, reset, err := s.tenants.Events(r.Context(), after, 1000)
		if err != nil {
			cancel()
			if r.Context().Err() != nil {
				return nil
			}
			return err // the stream has begun: the client sees it end
		}
		if len(events) == 0 && time.Since(beat) >= feedHeartbeat {
			events = []tenantctx.Event{{Type: "sync", Version: after}}
		}
		if len(events) > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for _, ev := range events {
				if err := tenantctx.WriteEvent(w, ev); err != nil {
					cancel()
					return nil // the client went away
				}
			}
			if err := rc.Flush(); err != nil {
				cancel()
				return nil
			}
			beat = time.Now()
		}
		if reset {
			cancel()
			return nil
		}
		if next > after {
			after = next
			cancel()
			continue // there may be more
		}
		select {
		case <-changed:
		case <-time.After(time.Second):
		case <-r.Context().Done():
			cancel()
			return nil
		case <-s.closing:
			cancel()
			return nil
		}
		cancel()
	}
}

func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	routes, err := s.store(r).Routes(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.Route]{Items: routes})
}

func (s *Server) addDomain(w http.ResponseWriter, r *http.Request) error {
	var req DomainRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var d catalog.Domain
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		t, err := tx.GetTenant(r.Context(), r.PathValue("ref"))
		if err != nil {
			return err
		}
		if d, err = tx.AddDomain(r.Context(), t.ID, req.Domain); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "tenant.domain_claimed", TargetKind: "tenant",
			TargetID: t.ID.String(), ToState: d.Domain, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, domainView(d))
}

func (s *Server) listDomains(w http.ResponseWriter, r *http.Request) error {
	t, err := s.store(r).GetTenant(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	ds, err := s.store(r).Domains(r.Context(), []uuid.UUID{t.ID})
	if err != nil {
		return err
	}
	out := []DomainResponse{}
	for _, d := range ds[t.ID] {
		out = append(out, domainView(d))
	}
	return writeJSON(w, http.StatusOK, List[DomainResponse]{Items: out})
}

// verifyDomain checks the tenant's proof of control and, when it holds,
// lets the edge serve the tenant on the domain.
func (s *Server) verifyDomain(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Domains == nil {
		return errorf(http.StatusServiceUnavailable, "domain_proof_unavailable", "this control plane cannot check domain proofs")
	}
	t, err := s.store(r).GetTenant(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	d, err := s.store(r).GetDomain(r.Context(), t.ID, r.PathValue("domain"))
	if err != nil {
		return err
	}
	if d.VerifiedAt == nil {
		if err := s.cfg.Domains.Prove(r.Context(), d.Domain, d.Token); err != nil {
			if errors.Is(err, domainproof.ErrNotProven) {
				return catalog.Invalid("domain_not_proven", "%v", err)
			}
			return err
		}
		err = s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
			if d, err = tx.MarkDomainVerified(r.Context(), t.ID, d.Domain); err != nil {
				return err
			}
			return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "tenant.domain_verified", TargetKind: "tenant",
				TargetID: t.ID.String(), ToState: d.Domain, RequestID: requestID(r)})
		})
		if err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, domainView(d))
}

func (s *Server) removeDomain(w http.ResponseWriter, r *http.Request) error {
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		t, err := tx.GetTenant(r.Context(), r.PathValue("ref"))
		if err != nil {
			return err
		}
		if err := tx.RemoveDomain(r.Context(), t.ID, r.PathValue("domain")); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "tenant.domain_removed", TargetKind: "tenant",
			TargetID: t.ID.String(), FromState: r.PathValue("domain"), RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
