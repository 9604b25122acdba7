package catalog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return catalog.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
}

type bundle struct {
	ctx   context.Context
	store *catalog.Store
	pool  *pgxpool.Pool
}

// setup returns a store on a fresh, migrated control database with region
// r1, shards s1 and s2 (capacity 10) and product notes (version 2, default).
func setup(t *testing.T) bundle {
	t.Helper()
	ctx := testkit.Context(t, 2*time.Minute)
	pool, _ := testkit.MigratedDatabase(t, "catalog", migrate)
	store := catalog.New(pool)
	must(t, err1(store.CreateRegion(ctx, catalog.Region{Name: "r1"})))
	for _, name := range []string{"s1", "s2"} {
		must(t, err1(store.CreateShard(ctx, catalog.Shard{Name: name, Region: "r1", DSN: "postgres://x@127.0.0.1:1/postgres", Capacity: 10})))
	}
	_, _, err := store.RegisterProduct(ctx, catalog.RegisterProductParams{Name: "notes", Default: true, Migrations: []catalog.Migration{
		{Version: 1, Name: "one", SQL: "-- +goose Up\nCREATE TABLE a (id int);"},
		{Version: 2, Name: "two", SQL: "-- +goose Up\nCREATE TABLE b (id int);"},
	}})
	must(t, err)
	return bundle{ctx: ctx, store: store, pool: pool}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func err1[T any](_ T, err error) error { return err }

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if !catalog.IsCode(err, code) {
		t.Fatalf("error = %v, want code %s", err, code)
	}
}

func TestCreateTenantValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	must(t, err1(b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "taken"})))
	// The shortest slugs are fine (a fuzzer once found these panicking).
	must(t, err1(b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "abc"})))
	must(t, err1(b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "a-b"})))

	tests := []struct {
		name string
		p    catalog.CreateTenantParams
		code string
	}{
		{"too short", catalog.CreateTenantParams{Slug: "ab"}, "invalid_slug"},
		{"too long", catalog.CreateTenantParams{Slug: string(make([]byte, 64))}, "invalid_slug"},
		{"upper case", catalog.CreateTenantParams{Slug: "Acme"}, "invalid_slug"},
		{"leading hyphen", catalog.CreateTenantParams{Slug: "-acme"}, "invalid_slug"},
		{"trailing hyphen", catalog.CreateTenantParams{Slug: "acme-"}, "invalid_slug"},
		{"dot", catalog.CreateTenantParams{Slug: "ac.me"}, "invalid_slug"},
		{"punycode", catalog.CreateTenantParams{Slug: "xn--80ak6aa92e"}, "invalid_slug"},
		{"reserved", catalog.CreateTenantParams{Slug: "admin"}, "reserved_slug"},
		{"duplicate", catalog.CreateTenantParams{Slug: "taken"}, "slug_taken"},
		{"unknown region", catalog.CreateTenantParams{Slug: "acme", Region: "nowhere"}, "unknown_region"},
		{"unknown product", catalog.CreateTenantParams{Slug: "acme", Products: []string{"nope"}}, "unknown_product"},
		{"product twice", catalog.CreateTenantParams{Slug: "acme", Products: []string{"notes", "notes"}}, "invalid_products"},
		{"tier", catalog.CreateTenantParams{Slug: "acme", Tier: 4}, "invalid_tier"},
		{"negative tier", catalog.CreateTenantParams{Slug: "acme", Tier: -1}, "invalid_tier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.store.CreateTenant(b.ctx, tt.p)
			wantCode(t, err, tt.code)
		})
	}
	ts, _, err := b.store.ListTenants(b.ctx, catalog.TenantFilter{})
	must(t, err)
	if len(ts) != 3 {
		t.Fatalf("bad creates left %d tenants, want only the three good ones", len(ts))
	}
}

func TestCreateTenantDefaults(t *testing.T) {
	t.Parallel()
	b := setup(t)

	tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "acme"})
	must(t, err)
	if tn.State != catalog.StateProvisioning || tn.Region != "r1" || tn.DisplayName != "acme" {
		t.Fatalf("tenant = %+v", tn)
	}
	if len(tn.Installations) != 1 || tn.Installations[0].Product != "notes" || tn.Installations[0].State != catalog.InstallationPending {
		t.Fatalf("installations = %+v", tn.Installations)
	}
	got, err := b.store.GetTenant(b.ctx, "acme")
	must(t, err)
	if got.ID != tn.ID {
		t.Fatalf("by slug: %s, want %s", got.ID, tn.ID)
	}
	got, err = b.store.GetTenant(b.ctx, tn.ID.String())
	must(t, err)
	if got.Slug != "acme" {
		t.Fatalf("by id: %s", got.Slug)
	}
}

// The database must refuse every reserved slug the Go list refuses, and no
// other: the two lists are kept equal by this test.
func TestReservedSlugsMatchDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)

	rows, err := b.pool.Query(b.ctx, `SELECT slug FROM reserved_slugs ORDER BY slug`)
	must(t, err)
	inDB, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	inGo := slices.Clone(catalog.ReservedSlugs)
	slices.Sort(inGo)
	if !slices.Equal(inDB, inGo) {
		t.Fatalf("reserved slugs differ:\n go: %v\n db: %v", inGo, inDB)
	}
	_, err = b.pool.Exec(b.ctx, `INSERT INTO tenants (id, slug, display_name, region, tier, state)
		VALUES ($1, 'www', 'x', 'r1', 0, 'provisioning')`, uuid.New())
	if err == nil {
		t.Fatal("database accepted a reserved slug")
	}
}

// Every pair of states the Go state machine allows, the database allows,
// and every pair it refuses, the database refuses.
func TestTransitionsMatchDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)

	rows, err := b.pool.Query(b.ctx, `SELECT from_state, to_state FROM tenant_transitions`)
	must(t, err)
	pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var p [2]string
		return p, r.Scan(&p[0], &p[1])
	})
	must(t, err)
	inDB := map[[2]string]bool{}
	for _, p := range pairs {
		inDB[p] = true
	}
	for _, from := range catalog.TenantStates {
		for _, to := range catalog.TenantStates {
			if from == to {
				continue
			}
			if got, want := inDB[[2]string{string(from), string(to)}], catalog.CanTransition(from, to); got != want {
				t.Errorf("%s -> %s: database allows=%v, Go allows=%v", from, to, got, want)
			}
		}
	}
	// Each action's source states must be able to reach the action's target.
	targets := map[catalog.Action]catalog.TenantState{
		catalog.ActionSuspend: catalog.StateSuspended, catalog.ActionResume: catalog.StateActive,
		catalog.ActionDeactivate: catalog.StateDeactivated, catalog.ActionDelete: catalog.StateDeleted,
		catalog.ActionPurge: catalog.StatePurged, catalog.ActionRetry: catalog.StateProvisioning,
	}
	for action, to := range targets {
		for _, from := range catalog.ActionSources[action] {
			if !catalog.CanTransition(from, to) {
				t.Errorf("action %s applies to %s but %s -> %s is not a transition", action, from, from, to)
			}
		}
	}

	// The trigger holds even against a hand-written UPDATE.
	tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "acme"})
	must(t, err)
	_, err = b.pool.Exec(b.ctx, `UPDATE tenants SET state = 'suspended' WHERE id = $1`, tn.ID)
	if err == nil {
		t.Fatal("database allowed provisioning -> suspended")
	}
}

func TestTransition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "acme"})
	must(t, err)
	step := func(action string, from []catalog.TenantState, to catalog.TenantState) (catalog.Tenant, error) {
		return b.store.Transition(b.ctx, catalog.TransitionParams{
			TenantID: tn.ID, Action: action, From: from, To: to, Actor: "test", Reason: "because", Retention: time.Hour,
		})
	}

	_, err = step("suspend", catalog.ActionSources[catalog.ActionSuspend], catalog.StateSuspended)
	wantCode(t, err, "illegal_transition")
	must(t, err1(step("activate", []catalog.TenantState{catalog.StateProvisioning}, catalog.StateActive)))
	must(t, err1(step("suspend", catalog.ActionSources[catalog.ActionSuspend], catalog.StateSuspended)))
	del, err := step("delete", catalog.ActionSources[catalog.ActionDelete], catalog.StateDeleted)
	must(t, err)
	if del.DeletedAt == nil || del.PurgeAfter == nil || del.StateBeforeDelete != catalog.StateSuspended {
		t.Fatalf("deleted tenant = %+v", del)
	}
	if d := del.PurgeAfter.Sub(*del.DeletedAt); d < 59*time.Minute || d > 61*time.Minute {
		t.Fatalf("purge_after - deleted_at = %s, want the 1h retention", d)
	}
	und, err := step("undelete", catalog.ActionSources[catalog.ActionUndelete], del.StateBeforeDelete)
	must(t, err)
	if und.State != catalog.StateSuspended || und.DeletedAt != nil || und.PurgeAfter != nil {
		t.Fatalf("undeleted tenant = %+v", und)
	}
	audit, err := b.store.ListAudit(b.ctx, "tenant", tn.ID.String(), 100)
	must(t, err)
	var actions []string
	for _, a := range audit {
		actions = append(actions, a.Action+":"+a.FromState+">"+a.ToState)
	}
	want := []string{"tenant.activate:provisioning>active", "tenant.suspend:active>suspended",
		"tenant.delete:suspended>deleted", "tenant.undelete:deleted>suspended"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit = %v, want %v", actions, want)
	}
}

// Two transactions take change-log rows in one order and commit in the
// other: a reader following versions must see them in commit order and must
// never see the later-committing one's row before it commits.
func TestChangeLogFollowsCommitOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	latest := func() int64 {
		cs, err := b.store.Changes(b.ctx, 0, 100000)
		must(t, err)
		if len(cs) == 0 {
			return 0
		}
		return cs[len(cs)-1].Version
	}
	after := latest()

	tx1, err := b.pool.Begin(b.ctx)
	must(t, err)
	defer tx1.Rollback(b.ctx)
	tx2, err := b.pool.Begin(b.ctx)
	must(t, err)
	defer tx2.Rollback(b.ctx)
	// tx1 writes first (takes the smaller change-log id) ...
	_, err = tx1.Exec(b.ctx, `INSERT INTO regions (name) VALUES ('first')`)
	must(t, err)
	_, err = tx2.Exec(b.ctx, `INSERT INTO regions (name) VALUES ('second')`)
	must(t, err)
	// ... but tx2 commits first.
	must(t, tx2.Commit(b.ctx))
	cs, err := b.store.Changes(b.ctx, after, 100)
	must(t, err)
	if len(cs) != 1 || cs[0].EntityID != "second" {
		t.Fatalf("after tx2 commits, changes = %v, want only 'second'", ids(cs))
	}
	seen := cs[0].Version
	must(t, tx1.Commit(b.ctx))
	cs, err = b.store.Changes(b.ctx, seen, 100)
	must(t, err)
	if len(cs) != 1 || cs[0].EntityID != "first" {
		t.Fatalf("a reader resuming after %d must get 'first', got %v", seen, ids(cs))
	}
}

func ids(cs []catalog.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%d:%s/%s", c.Version, c.Entity, c.EntityID))
	}
	return out
}

func TestChangeLogRecordsTenantChangesWithoutSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cs, err := b.store.Changes(b.ctx, 0, 1000)
	must(t, err)
	for _, c := range cs {
		if c.Entity == "shards" && containsKey(t, c.Data, "dsn") {
			t.Fatalf("shard change carries its DSN: %s", c.Data)
		}
	}
	tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "acme"})
	must(t, err)
	last := cs[len(cs)-1].Version
	cs, err = b.store.Changes(b.ctx, last, 1000)
	must(t, err)
	var entities []string
	for _, c := range cs {
		if c.TenantID == nil || *c.TenantID != tn.ID {
			t.Fatalf("change %v does not name tenant %s", ids([]catalog.Change{c}), tn.ID)
		}
		entities = append(entities, c.Entity)
	}
	if !slices.Equal(entities, []string{"tenants", "installations"}) {
		t.Fatalf("create wrote changes %v", entities)
	}
}

func containsKey(t *testing.T, data []byte, key string) bool {
	t.Helper()
	var m map[string]any
	must(t, json.Unmarshal(data, &m))
	_, ok := m[key]
	return ok
}

func TestIdempotencyKeyConcurrentClaims(t *testing.T) {
	t.Parallel()
	b := setup(t)

	// Ten concurrent requests with one key: exactly one goes ahead, the
	// others get its stored response.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ahead, replayed := 0, 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := b.store.InTx(b.ctx, func(tx *catalog.Store) error {
				stored, err := tx.ClaimIdempotencyKey(b.ctx, "k1", []byte("fp"))
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				if stored != nil {
					if stored.Status != 201 {
						return fmt.Errorf("replayed status %d", stored.Status)
					}
					replayed++
					return nil
				}
				ahead++
				time.Sleep(20 * time.Millisecond) // hold the key while others queue on it
				return tx.SaveIdempotentResponse(b.ctx, "k1", 201, []byte(`{"ok":true}`))
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ahead != 1 || replayed != 9 {
		t.Fatalf("ahead=%d replayed=%d, want 1 and 9", ahead, replayed)
	}
	err := b.store.InTx(b.ctx, func(tx *catalog.Store) error {
		_, err := tx.ClaimIdempotencyKey(b.ctx, "k1", []byte("other"))
		return err
	})
	wantCode(t, err, "idempotency_key_reused")
}

func TestConcurrentCreatesOfOneSlug(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: "race"})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case catalog.IsCode(err, "slug_taken"):
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates succeeded, want exactly 1", ok)
	}
}

func TestRegisterProductHistoryIsAppendOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m1 := catalog.Migration{Version: 1, Name: "one", SQL: "-- +goose Up\nCREATE TABLE a (id int);"}
	m2 := catalog.Migration{Version: 2, Name: "two", SQL: "-- +goose Up\nCREATE TABLE b (id int);"}
	m3 := catalog.Migration{Version: 3, Name: "three", SQL: "-- +goose Up\nCREATE TABLE c (id int);"}

	_, changed, err := b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: "notes", Migrations: []catalog.Migration{m1, m2}})
	must(t, err)
	if changed {
		t.Fatal("registering the same migrations again reported a change")
	}
	p, changed, err := b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: "notes", Migrations: []catalog.Migration{m1, m2, m3}})
	must(t, err)
	if !changed || p.CurrentVersion != 3 {
		t.Fatalf("appending: changed=%v version=%d", changed, p.CurrentVersion)
	}
	altered := m2
	altered.SQL += "\nCREATE TABLE x (id int);"
	tests := []struct {
		name string
		ms   []catalog.Migration
		code string
	}{
		{"changed", []catalog.Migration{m1, altered, m3}, "migration_changed"},
		{"missing", []catalog.Migration{m1, m3}, "migration_missing"},
		{"unordered", []catalog.Migration{m2, m1}, "invalid_migrations"},
		{"no annotation", []catalog.Migration{{Version: 1, Name: "x", SQL: "CREATE TABLE a (id int);"}}, "invalid_migrations"},
		{"plinth schema", []catalog.Migration{{Version: 1, Name: "x", SQL: "-- +goose Up\nDROP TABLE plinth.identity;"}}, "invalid_migrations"},
		{"inserted before the current version", []catalog.Migration{m1, {Version: 2, Name: "two", SQL: m2.SQL},
			{Version: 3, Name: "three", SQL: m3.SQL}, {Version: 5, Name: "five", SQL: m3.SQL}, {Version: 4, Name: "four", SQL: m3.SQL}}, "invalid_migrations"},
		{"empty", nil, "invalid_migrations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: "notes", Migrations: tt.ms})
			wantCode(t, err, tt.code)
		})
	}
	p, err = b.store.GetProduct(b.ctx, "notes")
	must(t, err)
	if p.CurrentVersion != 3 {
		t.Fatalf("refused registrations changed the version to %d", p.CurrentVersion)
	}
	// A migration slotted in below the current version is refused, not
	// silently skipped.
	m10 := catalog.Migration{Version: 10, Name: "ten", SQL: m1.SQL}
	m20 := catalog.Migration{Version: 20, Name: "twenty", SQL: m2.SQL}
	_, _, err = b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: "gappy", Migrations: []catalog.Migration{m10, m20}})
	must(t, err)
	_, _, err = b.store.RegisterProduct(b.ctx, catalog.RegisterProductParams{Name: "gappy",
		Migrations: []catalog.Migration{m10, {Version: 15, Name: "fifteen", SQL: m3.SQL}, m20}})
	wantCode(t, err, "migration_out_of_order")
}

func TestReserveDatabasePlacement(t *testing.T) {
	t.Parallel()
	b := setup(t)
	newInst := func(slug string) uuid.UUID {
		tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: slug})
		must(t, err)
		return tn.Installations[0].ID
	}

	// Fill s1 a little (warm intents count as used) so s2 has the most free capacity.
	must(t, err1(b.store.SetWarmPool(b.ctx, "s1", "notes", 4)))
	if got, err := b.store.ReserveWarm(b.ctx, "s1", "notes", 2, 3); err != nil || len(got) != 3 {
		t.Fatalf("reserved %d warm intents (%v), want 3", len(got), err)
	}
	inst := newInst("acme")
	d, _, err := b.store.ReserveDatabase(b.ctx, inst)
	must(t, err)
	// s1 holds warm databases, but they are still creating, not warm: cold
	// placement goes to the emptiest shard.
	if d.Shard != "s2" || d.State != catalog.DatabaseCreating || d.SchemaVersion != 2 {
		t.Fatalf("placed %+v, want a creating database on s2 at version 2", d)
	}
	again, _, err := b.store.ReserveDatabase(b.ctx, inst)
	must(t, err)
	if again.ID != d.ID {
		t.Fatal("reserving twice gave two databases")
	}

	// A warm database at the current version is claimed, whatever its shard.
	warm, err := b.store.ReserveWarm(b.ctx, "s1", "notes", 2, 1)
	must(t, err)
	ok, err := b.store.SetDatabaseState(b.ctx, warm[0].ID, catalog.DatabaseCreating, catalog.DatabaseWarm)
	must(t, err)
	if !ok {
		t.Fatal("warm intent was not in creating")
	}
	d, claimed, err := b.store.ReserveDatabase(b.ctx, newInst("globex"))
	must(t, err)
	if d.ID != warm[0].ID || d.State != catalog.DatabaseAssigned || !claimed {
		t.Fatalf("claimed %+v, want warm database %s assigned", d, warm[0].ID)
	}

	// Draining and unhealthy shards take nothing new.
	must(t, err1(b.store.SetDraining(b.ctx, "s2", true)))
	for range 2 {
		must(t, err1(b.store.RecordProbe(b.ctx, "s1", errors.New("down"), 2)))
	}
	_, _, err = b.store.ReserveDatabase(b.ctx, newInst("initech"))
	wantCode(t, err, "no_capacity")
}

func TestPlacementNeverOverfillsAShard(t *testing.T) {
	t.Parallel()
	b := setup(t)
	must(t, err1(b.store.SetDraining(b.ctx, "s2", true)))
	// s1 has capacity 10; 16 concurrent placements.
	var insts []uuid.UUID
	for i := range 16 {
		tn, err := b.store.CreateTenant(b.ctx, catalog.CreateTenantParams{Slug: fmt.Sprintf("tenant-%02d", i)})
		must(t, err)
		insts = append(insts, tn.Installations[0].ID)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	placed, full := 0, 0
	for _, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := b.store.ReserveDatabase(b.ctx, inst)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				placed++
			case catalog.IsCode(err, "no_capacity"):
				full++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	sh, err := b.store.GetShard(b.ctx, "s1")
	must(t, err)
	if placed != 10 || full != 6 || sh.Databases != 10 {
		t.Fatalf("placed=%d full=%d databases=%d, want 10, 6, 10", placed, full, sh.Databases)
	}
}

func TestShardHealthNeedsConsecutiveFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	probe := func(err error) bool {
		changed, perr := b.store.RecordProbe(b.ctx, "s1", err, 2)
		must(t, perr)
		return changed
	}
	if probe(errors.New("timeout")) {
		t.Fatal("one failure made the shard unhealthy")
	}
	if !probe(errors.New("timeout")) {
		t.Fatal("two failures did not make the shard unhealthy")
	}
	sh, err := b.store.GetShard(b.ctx, "s1")
	must(t, err)
	if sh.Health != catalog.ShardUnhealthy || sh.HealthError != "timeout" {
		t.Fatalf("shard = %+v", sh)
	}
	if !probe(nil) {
		t.Fatal("a good probe did not make the shard healthy")
	}
}

func TestWarmPools(t *testing.T) {
	t.Parallel()
	b := setup(t)
	must(t, err1(b.store.SetWarmPool(b.ctx, "s1", "notes", 3)))
	ds, err := b.store.WarmDeficits(b.ctx)
	must(t, err)
	if len(ds) != 1 || ds[0].Shard != "s1" || ds[0].Missing != 3 || ds[0].Version != 2 {
		t.Fatalf("deficits = %+v", ds)
	}
	got, err := b.store.ReserveWarm(b.ctx, "s1", "notes", 2, 3)
	must(t, err)
	for _, d := range got {
		must(t, err1(b.store.SetDatabaseState(b.ctx, d.ID, catalog.DatabaseCreating, catalog.DatabaseWarm)))
	}
	ds, err = b.store.WarmDeficits(b.ctx)
	must(t, err)
	if len(ds) != 0 {
		t.Fatalf("full pool still has deficits %+v", ds)
	}
	// A second refill that computed its deficit earlier reserves nothing more.
	more, err := b.store.ReserveWarm(b.ctx, "s1", "notes", 2, 3)
	must(t, err)
	if len(more) != 0 {
		t.Fatalf("a full pool got %d more intents", len(more))
	}
	// Pool sizes are catalog changes like any other.
	var logged int
	must(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM change_log WHERE entity = 'warm_pools' AND entity_id = 's1/notes'`).Scan(&logged))
	if logged == 0 {
		t.Fatal("setting a warm pool size left no change-log row")
	}
	// Shrinking the pool retires the surplus.
	must(t, err1(b.store.SetWarmPool(b.ctx, "s1", "notes", 1)))
	n, err := b.store.RetireWarm(b.ctx)
	must(t, err)
	if n != 2 {
		t.Fatalf("retired %d, want 2", n)
	}
	_, err = b.store.SetWarmPool(b.ctx, "nope", "notes", 1)
	wantCode(t, err, "shard_not_found")
	_, err = b.store.SetWarmPool(b.ctx, "s1", "notes", 1001)
	wantCode(t, err, "invalid_size")
}

func TestTruncateKeepsUTF8Valid(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"héllo", 2, "h"}, {"héllo", 3, "hé"}, {"日本語", 4, "日"}, {"abc", 10, "abc"}, {"日本語", 0, ""},
	} {
		if got := catalog.Truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
