package provision_test

import (
	"fmt"
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
