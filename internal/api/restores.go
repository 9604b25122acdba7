package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// RestoreRequest is the body of POST /v1/restores.
type RestoreRequest struct {
	// Tenants are slugs or IDs.
	Tenants []string `json:"tenants"`
	// To is the moment to restore to: an RFC 3339 time, or a negative
	// duration before now such as -15m. Required unless Undo.
	To string `json:"to,omitempty"`
	// Product restores only that product's database.
	Product string `json:"product,omitempty"`
	// Undo swaps back the databases each tenant's last restore replaced.
	Undo bool `json:"undo,omitempty"`
	// Concurrency is how many databases are copied at once (1 to 32, 2).
	Concurrency int `json:"concurrency,omitempty"`
}

// ParseRestoreTarget reads a restore's target: an RFC 3339 time, or a
// negative Go duration (-15m, -1h30m) before now.
func ParseRestoreTarget(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, catalog.Invalid("invalid_target", "give the time to restore to (RFC 3339, or a duration before now such as -15m)")
	}
	if strings.HasPrefix(s, "-") {
		d, err := time.ParseDuration(s)
		if err != nil || d >= 0 {
			return time.Time{}, catalog.Invalid("invalid_target", "%q is not a duration before now such as -15m", truncate(s, 40))
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, catalog.Invalid("invalid_target", "%q is neither an RFC 3339 time (2026-12-07T10:00:00Z) nor a duration before now (-15m)", truncate(s, 40))
	}
	return t, nil
}

func (s *Server) startRestore(w http.ResponseWriter, r *http.Request) error {
	var req RestoreRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	p := catalog.CreateRestoreParams{Tenants: req.Tenants, Product: req.Product, Concurrency: req.Concurrency,
		Actor: ActorAdmin, RequestID: requestID(r)}
	switch {
	case req.Undo && req.To != "":
		return catalog.Invalid("invalid_target", "an undo takes no target time")
	case !req.Undo:
		t, err := ParseRestoreTarget(req.To, time.Now())
		if err != nil {
			return err
		}
		p.Target = &t
	}
	for _, t := range req.Tenants {
		if t == "" || len(t) > 63 {
			return catalog.Invalid("invalid_tenants", "%q is not a tenant slug or ID", truncate(t, 40))
		}
	}
	res, err := s.cfg.Service.StartRestore(r.Context(), s.store(r), p)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/restores/"+res.ID.String())
	return writeJSON(w, http.StatusAccepted, res)
}

func (s *Server) getRestore(w http.ResponseWriter, r *http.Request) error {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return catalog.NotFound("restore_not_found", "restore %q does not exist", truncate(r.PathValue("id"), 40))
	}
	res, err := s.store(r).GetRestore(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// StartRestore asks for a restore; WaitRestore follows it to its end.
func (c *Client) StartRestore(ctx context.Context, req RestoreRequest) (catalog.Restore, error) {
	var out catalog.Restore
	return out, c.Do(ctx, "POST", "/v1/restores", req, &out)
}

// GetRestore returns a restore and its items.
func (c *Client) GetRestore(ctx context.Context, id uuid.UUID) (catalog.Restore, error) {
	var out catalog.Restore
	return out, c.Do(ctx, "GET", fmt.Sprintf("/v1/restores/%s", id), nil, &out)
}
