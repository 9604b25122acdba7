package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
)

// Backups takes the scheduled backups of the stanzas this worker can reach
// (backup.PgBackRest does; a stanza is a shard, or the control database).
type Backups interface {
	Stanzas() []string
	Info(ctx context.Context, stanza string) (backup.Info, error)
	Backup(ctx context.Context, stanza string, typ backup.Type) error
	Archive(ctx context.Context, stanza string) (backup.Archive, error)
}

// BackupDueArgs is the periodic job that takes every backup the schedule
// says is due and records each stanza's backup and archive status. Being
// driven by what the repository holds, not by timers, it survives
// restarts: a backup missed while Plinth was down is taken when it starts.
type BackupDueArgs struct{}

// Kind implements river.JobArgs.
func (BackupDueArgs) Kind() string { return "plinth.backup_due" }

type backupDueWorker struct {
	river.WorkerDefaults[BackupDueArgs]
	*workers
}

// Timeout lets a full backup of a large shard finish.
func (w *backupDueWorker) Timeout(*river.Job[BackupDueArgs]) time.Duration { return 2 * time.Hour }

func (w *backupDueWorker) Work(ctx context.Context, _ *river.Job[BackupDueArgs]) error {
	if w.cfg.Backups == nil {
		return nil
	}
	var errs []error
	for _, stanza := range w.cfg.Backups.Stanzas() {
		errs = append(errs, w.store.RecordBackupStatus(ctx, w.backUp(ctx, stanza)))
	}
	return errors.Join(errs...)
}

// backUp takes the stanza's due backup, if any, and says how it stands.
func (w *workers) backUp(ctx context.Context, stanza string) catalog.BackupStatus {
	in, err := w.cfg.Backups.Info(ctx, stanza)
	var attempted *time.Time
	if err == nil {
		if typ, due := w.cfg.BackupSchedule.Due(in, time.Now()); due {
			now := time.Now()
			attempted = &now
			err = w.cfg.Backups.Backup(ctx, stanza, typ)
			switch {
			case errors.Is(err, backup.ErrBusy):
				err = nil // someone else's backup is running: it counts
			case err == nil:
				w.log.Info("scheduled backup taken", "stanza", stanza, "type", typ, "took", time.Since(now).Round(time.Millisecond))
			}
		}
	}
	if err != nil {
		w.log.Warn("scheduled backup failed", "stanza", stanza, "error", err)
	}
	if attempted == nil { // nothing taken: what was read (or its error) stands
		return w.backupStatus(ctx, stanza, nil, err, &in)
	}
	return w.backupStatus(ctx, stanza, attempted, err, nil)
}

// backupStatus reads how the stanza's backups and WAL archive stand after
// a backup attempted then (nil: none) that ended in backupErr; known is
// the stanza's backups when already read since (nil: read them).
func (w *workers) backupStatus(ctx context.Context, stanza string, attempted *time.Time, backupErr error, known *backup.Info) catalog.BackupStatus {
	st := catalog.BackupStatus{Stanza: stanza, LastAttemptAt: attempted}
	problems := []error{backupErr}
	if a, err := w.cfg.Backups.Archive(ctx, stanza); err != nil {
		problems = append(problems, err)
	} else {
		st.LastArchivedAt, st.ArchiveFailedAt, st.ArchiveFailures = a.LastArchived, a.LastFailed, a.Failed
	}
	in, err := known, error(nil)
	if in == nil {
		var read backup.Info
		read, err = w.cfg.Backups.Info(ctx, stanza)
		in = &read
	}
	if err != nil {
		problems = append(problems, err)
	} else if b, ok := in.Latest(); ok {
		stop := b.Stop
		st.LastSuccessAt, st.LastType, st.LastLabel = &stop, string(b.Type), b.Label
	}
	if err := errors.Join(problems...); err != nil {
		st.LastError = err.Error()
	}
	return st
}

// BackupArgs is an operator's backup of one stanza, a durable job so that
// it outlives the request that asked for it (a full backup of a large
// shard takes hours) and the process, if that dies: it is run again.
type BackupArgs struct {
	Stanza string `json:"stanza"`
	Type   string `json:"type"`
}

// Kind implements river.JobArgs.
func (BackupArgs) Kind() string { return "plinth.backup" }

// backupOpts makes a second request for the same backup, while the first
// waits or runs, the same run.
var backupOpts = &river.InsertOpts{
	MaxAttempts: 3,
	UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: []rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning,
		rivertype.JobStateScheduled, rivertype.JobStateRetryable,
	}},
}

type backupWorker struct {
	river.WorkerDefaults[BackupArgs]
	*workers
}

// Timeout lets a full backup of a large shard finish.
func (w *backupWorker) Timeout(*river.Job[BackupArgs]) time.Duration { return 6 * time.Hour }

func (w *backupWorker) Work(ctx context.Context, job *river.Job[BackupArgs]) error {
	stanza, typ := job.Args.Stanza, backup.Type(job.Args.Type)
	if w.cfg.Backups == nil || !slices.Contains(w.cfg.Backups.Stanzas(), stanza) {
		return river.JobCancel(fmt.Errorf("this worker does not back up %s", stanza))
	}
	began := time.Now()
	err := w.cfg.Backups.Backup(ctx, stanza, typ)
	if errors.Is(err, backup.ErrBusy) {
		return river.JobSnooze(15 * time.Second) // another backup of it runs: after that one
	}
	if err == nil {
		w.log.Info("backup taken", "stanza", stanza, "type", typ, "took", time.Since(began).Round(time.Millisecond))
	}
	if rerr := w.store.RecordBackupStatus(ctx, w.backupStatus(ctx, stanza, &began, err, nil)); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// BackupRun is an operator's backup as it goes.
type BackupRun struct {
	ID    int64  `json:"id"`
	Shard string `json:"shard"`
	Type  string `json:"type"`
	// State is queued, running, retrying (after a failed attempt),
	// succeeded or failed.
	State      string     `json:"state"`
	Attempts   int        `json:"attempts"`
	Error      string     `json:"error,omitempty"` // the last attempt's
	CreatedAt  time.Time  `json:"created_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Finished reports whether the run has ended, well or not.
func (r BackupRun) Finished() bool { return r.State == "succeeded" || r.State == "failed" }

// StartBackup queues a backup of the stanza (a shard, or "control"); while
// one of the same type waits or runs, that one is returned.
func (s *Service) StartBackup(ctx context.Context, stanza string, typ backup.Type) (BackupRun, error) {
	res, err := s.river.Insert(ctx, BackupArgs{Stanza: stanza, Type: string(typ)}, backupOpts)
	if err != nil {
		return BackupRun{}, fmt.Errorf("queue backup: %w", err)
	}
	return backupRun(res.Job)
}

// GetBackupRun returns the backup run id.
func (s *Service) GetBackupRun(ctx context.Context, id int64) (BackupRun, error) {
	job, err := s.river.JobGet(ctx, id)
	if errors.Is(err, river.ErrNotFound) || (err == nil && job.Kind != (BackupArgs{}).Kind()) {
		return BackupRun{}, catalog.NotFound("backup_run_not_found", "backup run %d does not exist", id)
	}
	if err != nil {
		return BackupRun{}, fmt.Errorf("get backup run: %w", err)
	}
	return backupRun(job)
}

func backupRun(job *rivertype.JobRow) (BackupRun, error) {
	var args BackupArgs
	if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
		return BackupRun{}, fmt.Errorf("backup run %d: %w", job.ID, err)
	}
	r := BackupRun{ID: job.ID, Shard: args.Stanza, Type: args.Type, Attempts: job.Attempt, CreatedAt: job.CreatedAt, FinishedAt: job.FinalizedAt}
	switch job.State {
	case rivertype.JobStateRunning:
		r.State = "running"
	case rivertype.JobStateRetryable:
		r.State = "retrying"
	case rivertype.JobStateCompleted:
		r.State = "succeeded"
	case rivertype.JobStateDiscarded, rivertype.JobStateCancelled:
		r.State = "failed"
	default:
		r.State = "queued"
	}
	if n := len(job.Errors); n > 0 && r.State != "succeeded" {
		r.Error = job.Errors[n-1].Error
	}
	return r, nil
}
