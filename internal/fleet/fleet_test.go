package fleet_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/fleet"
	"github.com/plinth-platform/plinth/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestRedactDSN(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://plinth:s3cret@10.0.0.5:5433/postgres?sslmode=require", "postgres://plinth@10.0.0.5:5433/postgres"},
		{"host=db.internal port=5432 user=admin password=hunter2 dbname=postgres", "postgres://admin@db.internal:5432/postgres"},
		{"::::", "(invalid)"},
	}
	for _, tt := range tests {
		got := fleet.RedactDSN(tt.in)
		if got != tt.want || strings.Contains(got, "s3cret") || strings.Contains(got, "hunter2") {
			t.Errorf("RedactDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseDSNRefusesWithoutEchoingSecrets(t *testing.T) {
	t.Parallel()
	_, err := fleet.ParseDSN("postgres://u:topsecret@host:notaport/db")
	if !catalog.IsCode(err, "invalid_dsn") || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("ParseDSN error = %v", err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	ctx := testkit.Context(t, time.Minute)
	c := testkit.SharedCluster(t)
	if err := fleet.Verify(ctx, c.DSN("postgres")); err != nil {
		t.Fatalf("a usable shard was refused: %v", err)
	}
	// A role that may not create databases.
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nocreate') THEN
			CREATE ROLE nocreate LOGIN PASSWORD 'pw' NOCREATEDB;
		END IF; END $$`)
	if err != nil {
		t.Fatal(err)
	}
	weak := strings.Replace(c.DSN("postgres"), "plinth:"+c.Password, "nocreate:pw", 1)
	if err := fleet.Verify(ctx, weak); !catalog.IsCode(err, "shard_insufficient_privilege") {
		t.Fatalf("a role without CREATEDB: %v", err)
	}
	port := strings.Split(strings.Split(c.DSN("postgres"), "@127.0.0.1:")[1], "/")[0]
	unreachable := strings.Replace(c.DSN("postgres"), ":"+port+"/", ":1/", 1)
	if err := fleet.Verify(ctx, unreachable); !catalog.IsCode(err, "shard_unreachable") {
		t.Fatalf("an unreachable shard: %v", err)
	}
	if err := fleet.Verify(context.Background(), unreachable); err != nil && strings.Contains(err.Error(), c.Password) {
		t.Fatal("the error shows the password")
	}
}
