package provision

import (
	"context"
	"errors"
	"time"

	"github.com/riverqueue/river"

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
func (w *backupDueWorker) backUp(ctx context.Context, stanza string) catalog.BackupStatus {
	st := catalog.BackupStatus{Stanza: stanza}
	var problems []error
	if a, err := w.cfg.Backups.Archive(ctx, stanza); err != nil {
		problems = append(problems, err)
	} else {
		st.LastArchivedAt, st.ArchiveFailedAt, st.ArchiveFailures = a.LastArchived, a.LastFailed, a.Failed
	}
	in, err := w.cfg.Backups.Info(ctx, stanza)
	if err == nil {
		if typ, due := w.cfg.BackupSchedule.Due(in, time.Now()); due {
			now := time.Now()
			st.LastAttemptAt = &now
			err = w.cfg.Backups.Backup(ctx, stanza, typ)
			switch {
			case errors.Is(err, backup.ErrBusy):
				err = nil // someone else's backup is running: it counts
			case err == nil:
				w.log.Info("scheduled backup taken", "stanza", stanza, "type", typ, "took", time.Since(now).Round(time.Millisecond))
			}
			if err == nil {
				in, err = w.cfg.Backups.Info(ctx, stanza)
			}
		}
	}
	if err != nil {
		w.log.Warn("scheduled backup failed", "stanza", stanza, "error", err)
		problems = append(problems, err)
	}
	if b, ok := in.Latest(); ok {
		stop := b.Stop
		st.LastSuccessAt, st.LastType, st.LastLabel = &stop, string(b.Type), b.Label
	}
	if err := errors.Join(problems...); err != nil {
		st.LastError = err.Error()
	}
	return st
}
