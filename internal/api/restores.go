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
	// Tenants are slugs or IDs (a purged tenant's ID only).
	Tenants []string `json:"tenants,omitempty"`
	// DeletedBetween, instead of Tenants, restores the tenants deleted (or
	// purged since) in [first, second): two times in To's format.
	DeletedBetween []string `json:"deleted_between,omitempty"`
	// To is the moment to restore to: an RFC 3339 time, or a negative
	// duration before now such as -15m. Required unless Undo.
	To string `json:"to,omitempty"`
	// As restores the one tenant into a new tenant of this slug (same
	// region and tier) for inspection, leaving the tenant as it is.
	As string `json:"as,omitempty"`
	// Product restores only that product's database.
	Product string `json:"product,omitempty"`
	// Undo swaps back the databases each tenant's last restore replaced.
	Undo bool `json:"undo,omitempty"`
	// Concurrency is how many databases each shard copies at once, and how
	// many tenants are swapped at once (1 to 32, 2).
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

// ParseDeletedBetween reads "A,B", two times in ParseRestoreTarget's
// format, the first before the second.
func ParseDeletedBetween(s string, now time.Time) ([2]time.Time, error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		return [2]time.Time{}, catalog.Invalid("invalid_deleted_between", "give the deletion window as two times A,B (RFC 3339, or durations before now such as -3h,-1h)")
	}
	return parseWindow([]string{a, b}, now)
}

func parseWindow(ts []string, now time.Time) ([2]time.Time, error) {
	var w [2]time.Time
	if len(ts) != 2 {
		return w, catalog.Invalid("invalid_deleted_between", "the deletion window is two times, not %d", len(ts))
	}
	for i, s := range ts {
		t, err := ParseRestoreTarget(s, now)
		if err != nil {
			return w, catalog.Invalid("invalid_deleted_between", "the deletion window's %s: %v", [2]string{"start", "end"}[i], err)
		}
		w[i] = t
	}
	if !w[0].Before(w[1]) {
		return w, catalog.Invalid("invalid_deleted_between", "the deletion window must end after it begins")
	}
	return w, nil
}

func (s *Server) startRestore(w http.ResponseWriter, r *http.Request) error {
	var req RestoreRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	p := catalog.CreateRestoreParams{Tenants: req.Tenants, As: req.As, Product: req.Product, Concurrency: req.Concurrency,
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
	if req.DeletedBetween != nil {
		w, err := parseWindow(req.DeletedBetween, time.Now())
		if err != nil {
			return err
		}
		p.DeletedBetween = &w
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
