package api_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestFleetMigrationOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, slug := range []string{"acme", "globex", "initech"} {
		b.createActive(t, slug)
	}
	must(t, err1(b.client.RegisterProduct(b.ctx, api.RegisterProductRequest{Name: "notes", Migrations: []catalog.Migration{
		{Version: 1, Name: "notes", SQL: "-- +goose Up\nCREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);"},
		{Version: 2, Name: "notes_created", SQL: "-- +goose Up\nALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();"},
		{Version: 3, Name: "notes_author", SQL: "-- +goose Up\nALTER TABLE notes ADD COLUMN author text NOT NULL DEFAULT '';"},
	}})))

	// Bad requests are refused and change nothing.
	before := b.snapshot(t)
	for _, tt := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/products/notes/migrations", `{"concurrency": 999}`, 422, "invalid_concurrency"},
		{"POST", "/v1/products/notes/migrations", `{"to": 7}`, 422, "invalid_version"},
		{"POST", "/v1/products/notes/migrations", `{"max_failure_ratio": 1.5}`, 422, "invalid_max_failure_ratio"},
		{"POST", "/v1/products/notes/migrations", `{"canary": -1}`, 422, "invalid_canary"},
		{"POST", "/v1/products/notes/migrations", `{"wat": 1}`, 400, "invalid_json"},
		{"POST", "/v1/products/nosuch/migrations", `{}`, 404, "product_not_found"},
		{"GET", "/v1/products/nosuch/migrations", ``, 404, "product_not_found"},
		{"GET", "/v1/migrations/not-a-uuid", ``, 404, "migration_run_not_found"},
		{"POST", "/v1/migrations/01a24914-dd44-72f7-8f19-668642b236de/pause", ``, 404, "migration_run_not_found"},
		// This control plane runs no backups.
		{"GET", "/v1/backups", ``, 404, "backups_not_configured"},
		{"POST", "/v1/backups", `{"shard": "s1"}`, 404, "backups_not_configured"},
		{"POST", "/v1/backups/verify", ``, 404, "backups_not_configured"},
		{"POST", "/v1/restores", `{"tenants": ["acme"], "to": "-15m"}`, 404, "backups_not_configured"},
		{"POST", "/v1/restores", `{"tenants": ["acme"]}`, 422, "invalid_target"},
		{"POST", "/v1/restores", `{"tenants": ["acme"], "to": "yesterday"}`, 422, "invalid_target"},
		{"POST", "/v1/restores", `{"tenants": ["acme"], "to": "15m"}`, 422, "invalid_target"},
		{"POST", "/v1/restores", `{"tenants": ["acme"], "to": "-15m", "undo": true}`, 422, "invalid_target"},
		{"POST", "/v1/restores", `{"tenants": [""], "undo": true}`, 422, "invalid_tenants"},
		{"POST", "/v1/restores", `{"tenants": ["nosuch"], "undo": true}`, 404, "tenant_not_found"},
		{"POST", "/v1/restores", `{"tenants": [], "undo": true}`, 422, "invalid_tenants"},
		{"POST", "/v1/restores", `{"tenants": ["acme"], "undo": true, "concurrency": 99}`, 422, "invalid_concurrency"},
		{"GET", "/v1/restores/not-a-uuid", ``, 404, "restore_not_found"},
		{"GET", "/v1/restores/01a24914-dd44-72f7-8f19-668642b236de", ``, 404, "restore_not_found"},
		{"POST", "/v1/drills", ``, 404, "backups_not_configured"},
		{"POST", "/v1/drills", `{"sample": -1}`, 422, "invalid_sample"},
		{"POST", "/v1/drills", `{"sample": 10001}`, 422, "invalid_sample"},
		{"POST", "/v1/drills", `{"sample": 5, "all": true}`, 422, "invalid_sample"},
		{"POST", "/v1/drills", `{"tenants": 5}`, 400, "invalid_json"},
		{"GET", "/v1/drills/not-a-uuid", ``, 404, "drill_not_found"},
		{"GET", "/v1/drills/01a24914-dd44-72f7-8f19-668642b236de", ``, 404, "drill_not_found"},
	} {
		status, code := b.raw(t, tt.method, tt.path, "Bearer "+token, "application/json", tt.body)
		if status != tt.status || code != tt.code {
			t.Errorf("%s %s %s: %d %s, want %d %s", tt.method, tt.path, tt.body, status, code, tt.status, tt.code)
		}
	}
	if ds, err := b.client.ListDrills(b.ctx); err != nil || len(ds.Items) != 0 {
		t.Errorf("drills after refused requests: %+v %v", ds, err)
	}
	if rep, err := b.client.GetDrillReport(b.ctx); err != nil || rep.WindowDays != 14 || len(rep.Tiers) != 1 || rep.Tiers[0].Tenants != 3 || rep.Tiers[0].OldestSuccess != nil {
		t.Errorf("drill report of three never-drilled tenants: %+v %v", rep, err)
	}
	if after := b.snapshot(t); after != before {
		t.Fatalf("refused requests changed the catalog:\n before %s\n after  %s", before, after)
	}
	if status, _ := b.raw(t, "POST", "/v1/products/notes/migrations", "", "application/json", `{}`); status != 401 {
		t.Fatalf("without the admin token: %d", status)
	}

	resp, err := b.client.StartMigration(b.ctx, "notes", api.MigrateRequest{Concurrency: 2})
	must(t, err)
	if resp.Run.TargetVersion != 3 || resp.Run.Total != 3 || resp.Run.Canary != 1 {
		t.Fatalf("started: %+v", resp.Run)
	}
	testkit.Eventually(t, 2*time.Minute, "the run to succeed", func() (bool, error) {
		got, err := b.client.GetMigration(b.ctx, resp.Run.ID.String())
		return err == nil && got.Run.State == catalog.RunSucceeded, fmt.Errorf("%+v %v", got.Run, err)
	})
	runs, err := b.client.ListMigrations(b.ctx, "notes")
	must(t, err)
	if len(runs) != 1 || runs[0].Tasks["done"] != 3 {
		t.Fatalf("runs: %+v", runs)
	}
	for _, slug := range []string{"acme", "globex", "initech"} {
		tn, err := b.client.GetTenant(b.ctx, slug)
		must(t, err)
		if v := tn.Installations[0].SchemaVersion; v != 3 {
			t.Errorf("%s at version %d", slug, v)
		}
	}
	if status, code := b.raw(t, "POST", "/v1/migrations/"+resp.Run.ID.String()+"/pause", "Bearer "+token, "", ""); status != 409 || code != "illegal_transition" {
		t.Fatalf("pausing a finished run: %d %s", status, code)
	}
}
