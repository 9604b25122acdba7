package provision_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// The scheduler takes the first full backup of a shard without one, then
// the incrementals its schedule asks for, and records each backup and how
// the shard archives its WAL.
func TestScheduledBackups(t *testing.T) {
	t.Parallel()
	b, br := backedUpWith(t, provision.Config{BackupCheckInterval: 200 * time.Millisecond,
		BackupSchedule: backup.Schedule{Full: time.Hour, Differential: time.Hour, Incremental: 3 * time.Second}}, true)
	b.active(t, "acme") // WAL to archive
	status := func() catalog.BackupStatus {
		list, err := b.store.ListBackupStatus(b.ctx)
		must(t, err)
		if len(list) != 1 {
			return catalog.BackupStatus{}
		}
		return list[0]
	}
	testkit.Eventually(t, 2*time.Minute, "a scheduled full backup, and WAL archived", func() (bool, error) {
		st := status()
		return st.Stanza == "s1" && st.LastType == "full" && st.LastError == "" && st.LastArchivedAt != nil,
			fmt.Errorf("%+v", st)
	})
	testkit.Eventually(t, 2*time.Minute, "a scheduled incremental backup", func() (bool, error) {
		st := status()
		return st.LastType == "incr" && st.LastError == "", fmt.Errorf("%+v", st)
	})
	in, err := br.Info(b.ctx, "s1")
	must(t, err)
	fulls := 0
	for _, set := range in.Backups {
		if set.Type == backup.Full {
			fulls++
		}
	}
	if fulls != 1 || len(in.Backups) < 2 {
		t.Fatalf("the repository holds %+v, want one full backup and incrementals after it", in.Backups)
	}
	if st := status(); st.ArchiveFailures != 0 || st.LastSuccessAt == nil || st.LastLabel == "" {
		t.Fatalf("status %+v", st)
	}
}

// An operator's backup is a durable job: a second request while it waits
// is the same run, it ends in the repository and the backup status, and a
// shard this worker does not back up fails it with the reason.
func TestBackupRuns(t *testing.T) {
	t.Parallel()
	// Scheduled backups never come due here; the job's worker still has
	// the repository to back up into.
	b, br := backedUpWith(t, provision.Config{BackupCheckInterval: time.Hour,
		BackupSchedule: backup.Schedule{Full: 1000 * time.Hour, Differential: 1000 * time.Hour, Incremental: 1000 * time.Hour}}, true)
	must(t, br.Backup(b.ctx, "s1", backup.Full))
	must(t, b.stopWorker())
	run, err := b.svc.StartBackup(b.ctx, "s1", backup.Incremental)
	must(t, err)
	again, err := b.svc.StartBackup(b.ctx, "s1", backup.Incremental)
	must(t, err)
	if run.State != "queued" || again.ID != run.ID {
		t.Fatalf("run %+v, the second request %+v: want one queued run", run, again)
	}
	lost, err := b.svc.StartBackup(b.ctx, "elsewhere", backup.Full)
	must(t, err)
	b.startWorker(t)
	wait := func(id int64) provision.BackupRun {
		var r provision.BackupRun
		testkit.Eventually(t, 2*time.Minute, "the backup run to finish", func() (bool, error) {
			var err error
			r, err = b.svc.GetBackupRun(b.ctx, id)
			return err == nil && r.Finished(), fmt.Errorf("%+v %v", r, err)
		})
		return r
	}
	if r := wait(run.ID); r.State != "succeeded" || r.Error != "" || r.FinishedAt == nil {
		t.Fatalf("the backup run: %+v", r)
	}
	in, err := br.Info(b.ctx, "s1")
	must(t, err)
	if latest, ok := in.Latest(); !ok || latest.Type != backup.Incremental || len(in.Backups) != 2 {
		t.Fatalf("the repository after the run: %+v", in.Backups)
	}
	list, err := b.store.ListBackupStatus(b.ctx)
	must(t, err)
	if len(list) != 1 || list[0].LastType != "incr" || list[0].LastAttemptAt == nil {
		t.Fatalf("backup status after the run: %+v", list)
	}
	if r := wait(lost.ID); r.State != "failed" || !strings.Contains(r.Error, "does not back up elsewhere") {
		t.Fatalf("a run for a shard not backed up here: %+v", r)
	}
	_, err = b.svc.GetBackupRun(b.ctx, 1<<40)
	wantCode(t, "an unknown run", err, "backup_run_not_found")
}
