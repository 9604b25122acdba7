package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/server"
	"github.com/plinth-platform/plinth/internal/testkit"
)

// kill -9 of the worker halfway through a fleet migration, then a restart:
// the run resumes by itself, and every tenant database ends at the target
// version with each migration applied exactly once.
func TestWorkerKilledDuringFleetMigration(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, 5*time.Minute)
	pool, dsn := testkit.MigratedDatabase(t, "control", migrateControl)
	shard := testkit.NewCluster(t)
	srv, err := server.Start(ctx, server.Config{DatabaseURL: dsn, Roles: []server.Role{server.RoleControl},
		Listen: "127.0.0.1:0", AdminToken: token})
	must(t, err)
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	c := api.NewClient("http://"+srv.Addr(), token)
	must(t, errOf(c.CreateRegion(ctx, api.CreateRegionRequest{Name: "r1"})))
	must(t, errOf(c.CreateShard(ctx, api.CreateShardRequest{Name: "s1", Region: "r1", DSN: shard.DSN("postgres")})))
	v1 := catalog.Migration{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id int);"}
	must(t, errOf(c.RegisterProduct(ctx, api.RegisterProductRequest{Name: "notes", Default: true, Migrations: []catalog.Migration{v1}})))

	worker := startWorker(t, ctx, dsn)
	const n = 30
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.CreateTenant(ctx, api.CreateTenantRequest{Slug: fmt.Sprintf("tenant-%02d", i)})
			if err == nil {
				_, err = c.WaitOperation(ctx, resp.Operation.ID.String(), nil)
			}
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d tenants provisioned", n)
	// Each tenant's migration takes a while, so the kill lands mid-run.
	v2 := catalog.Migration{Version: 2, Name: "slow", SQL: "-- +goose Up\nSELECT pg_sleep(0.3);\nALTER TABLE notes ADD COLUMN body text;"}
	must(t, errOf(c.RegisterProduct(ctx, api.RegisterProductRequest{Name: "notes", Migrations: []catalog.Migration{v1, v2}})))
	canary := 0
	resp, err := c.StartMigration(ctx, "notes", api.MigrateRequest{Concurrency: 2, Canary: &canary})
	must(t, err)
	done := func() int {
		got, err := c.GetMigration(ctx, resp.Run.ID.String())
		must(t, err)
		return got.Run.Tasks["done"]
	}
	testkit.Eventually(t, 2*time.Minute, "some tenants to be migrated", func() (bool, error) { return done() >= 4, nil })
	must(t, worker.Process.Signal(syscall.SIGKILL))
	_ = worker.Wait()
	killedAt := done()
	t.Logf("worker killed with %d of %d tenants migrated", killedAt, n)
	if killedAt == n {
		t.Fatal("the run finished before the worker was killed; the test proves nothing")
	}

	startWorker(t, ctx, dsn)
	t.Log("worker restarted")
	var run api.MigrationRunResponse
	testkit.Eventually(t, 3*time.Minute, "the resumed run to finish", func() (bool, error) {
		var err error
		run, err = c.GetMigration(ctx, resp.Run.ID.String())
		return err == nil && run.Run.FinishedAt != nil, fmt.Errorf("%+v %v", run.Run, err)
	})
	if run.Run.State != catalog.RunSucceeded || run.Run.Tasks["done"] != n {
		t.Fatalf("the resumed run: %+v", run.Run)
	}
	rows, err := pool.Query(ctx, `SELECT name, schema_version FROM tenant_databases WHERE state = 'assigned'`)
	must(t, err)
	type db struct {
		name    string
		version int64
	}
	dbs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (db, error) {
		var d db
		return d, r.Scan(&d.name, &d.version)
	})
	must(t, err)
	if len(dbs) != n {
		t.Fatalf("%d assigned databases, want %d", len(dbs), n)
	}
	for _, d := range dbs {
		conn, err := pgx.Connect(ctx, shard.DSN(d.name))
		must(t, err)
		var applied int
		must(t, conn.QueryRow(ctx, `SELECT count(*) FROM plinth.goose_db_version WHERE version_id = 2 AND is_applied`).Scan(&applied))
		conn.Close(ctx)
		if d.version != 2 || applied != 1 {
			t.Errorf("%s: catalog version %d, migration 2 applied %d times", d.name, d.version, applied)
		}
	}
}
