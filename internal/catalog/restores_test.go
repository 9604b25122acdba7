package catalog_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// A database a restore replaced is kept for the retention window (the
// undo window), then marked for the sweeper to drop; a recent one stays.
func TestExpireReplacedDatabases(t *testing.T) {
	t.Parallel()
	b := setup(t)
	past := time.Now().Add(-time.Hour)
	var dbs []uuid.UUID
	for i := range 2 {
		db := uuid.Must(uuid.NewV7())
		_, err := b.store.RecoverTenant(b.ctx, catalog.RecoverTenantParams{ID: uuid.Must(uuid.NewV7()), Slug: fmt.Sprintf("replaced-%d", i), Region: "r1",
			CreatedAt: past, Actor: "test", Databases: []catalog.RecoveredDatabase{{ID: db, Name: "t_" + strings.ReplaceAll(db.String(), "-", ""),
				Shard: "s1", Product: "notes", CreatedAt: past, InstallationID: uuid.Must(uuid.NewV7()), InstallationCreatedAt: past, AssignedAt: &past}}})
		must(t, err)
		dbs = append(dbs, db)
	}
	_, err := b.pool.Exec(b.ctx, `UPDATE tenant_databases SET state = 'replaced',
		updated_at = CASE WHEN id = $1 THEN now() - interval '31 days' ELSE now() - interval '29 days' END WHERE id = ANY($2)`, dbs[0], dbs)
	must(t, err)
	n, err := b.store.ExpireReplaced(b.ctx, 30*24*time.Hour, 10)
	must(t, err)
	for i, want := range []catalog.DatabaseState{catalog.DatabaseDropping, catalog.DatabaseReplaced} {
		d, err := b.store.GetDatabase(b.ctx, dbs[i])
		must(t, err)
		if d.State != want {
			t.Errorf("database replaced %d days ago is %s, want %s", []int{31, 29}[i], d.State, want)
		}
	}
	if n != 1 {
		t.Errorf("ExpireReplaced = %d, want 1", n)
	}
}
