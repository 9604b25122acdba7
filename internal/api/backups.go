package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
)

// Backups takes and lists the backups of the shards this control plane
// runs (backup.PgBackRest does). A stanza is named after its shard; the
// control database is the stanza "control".
type Backups interface {
	Stanzas() []string
	List(ctx context.Context) ([]backup.Info, error)
	Verify(ctx context.Context, stanza string) error
}

// VerifyRequest is the body of POST /v1/backups/verify.
type VerifyRequest struct {
	// Shards to verify ("control" for the control database); all when empty.
	Shards []string `json:"shards,omitempty"`
}

// VerifyResult is one shard's verification.
type VerifyResult struct {
	Shard string `json:"shard"`
	OK    bool   `json:"ok"`
	// Detail names the files or backups that failed.
	Detail string `json:"detail,omitempty"`
	TookMS int64  `json:"took_ms"`
}

// BackupRequest is the body of POST /v1/backups.
type BackupRequest struct {
	// Shard is the shard to back up ("control" for the control database).
	Shard string `json:"shard"`
	// Type is full (the default), diff or incr.
	Type string `json:"type,omitempty"`
}

func (s *Server) backups() (Backups, error) {
	if s.cfg.Backups == nil {
		return nil, catalog.NotFound("backups_not_configured", "this control plane runs no backups (plinth dev sets them up when pgbackrest is installed)")
	}
	return s.cfg.Backups, nil
}

func (s *Server) listBackups(w http.ResponseWriter, r *http.Request) error {
	b, err := s.backups()
	if err != nil {
		return err
	}
	infos, err := b.List(r.Context())
	if err != nil {
		return err
	}
	if infos == nil {
		infos = []backup.Info{}
	}
	return writeJSON(w, http.StatusOK, List[backup.Info]{Items: infos})
}

func (s *Server) runBackup(w http.ResponseWriter, r *http.Request) error {
	b, err := s.backups()
	if err != nil {
		return err
	}
	var req BackupRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	typ := backup.Type(req.Type)
	switch typ {
	case "":
		typ = backup.Full
	case backup.Full, backup.Differential, backup.Incremental:
	default:
		return catalog.Invalid("invalid_backup_type", "type must be full, diff or incr, not %q", truncate(req.Type, 20))
	}
	if !slices.Contains(b.Stanzas(), req.Shard) {
		return catalog.NotFound("shard_not_backed_up", "no shard %q is backed up here (backed up: %v)", truncate(req.Shard, 63), b.Stanzas())
	}
	run, err := s.cfg.Service.StartBackup(r.Context(), req.Shard, typ)
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("/v1/backups/runs/%d", run.ID))
	return writeJSON(w, http.StatusAccepted, run)
}

func (s *Server) getBackupRun(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return catalog.NotFound("backup_run_not_found", "backup run %q does not exist", truncate(r.PathValue("id"), 40))
	}
	run, err := s.cfg.Service.GetBackupRun(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}

// verifyBackups checks every file of the shards' backups and archived WAL
// against its checksum. It answers 200 with a result per shard, failed or
// not: a failed verification is a finding, not a failed request.
func (s *Server) verifyBackups(w http.ResponseWriter, r *http.Request) error {
	b, err := s.backups()
	if err != nil {
		return err
	}
	var req VerifyRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	shards := req.Shards
	if len(shards) == 0 {
		shards = b.Stanzas()
	}
	for _, sh := range shards {
		if !slices.Contains(b.Stanzas(), sh) {
			return catalog.NotFound("shard_not_backed_up", "no shard %q is backed up here (backed up: %v)", truncate(sh, 63), b.Stanzas())
		}
	}
	out := make([]VerifyResult, 0, len(shards))
	for _, sh := range slices.Compact(slices.Sorted(slices.Values(shards))) {
		began := time.Now()
		err := b.Verify(r.Context(), sh)
		res := VerifyResult{Shard: sh, OK: err == nil, TookMS: time.Since(began).Milliseconds()}
		if err != nil {
			if r.Context().Err() != nil {
				return r.Context().Err()
			}
			res.Detail = err.Error()
		}
		out = append(out, res)
	}
	return writeJSON(w, http.StatusOK, List[VerifyResult]{Items: out})
}

// VerifyBackups verifies the shards' repositories.
func (c *Client) VerifyBackups(ctx context.Context, req VerifyRequest) ([]VerifyResult, error) {
	var out List[VerifyResult]
	return out.Items, c.Do(ctx, "POST", "/v1/backups/verify", req, &out)
}
