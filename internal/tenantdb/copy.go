package tenantdb

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// CopyFrom creates database name on the shard (dropping what an earlier,
// interrupted attempt left under that name) and loads into it a dump of
// the database src connects to, streamed from pg_dump into pg_restore.
// Passwords reach the two tools in their environment, never on a command
// line.
func (s *Shard) CopyFrom(ctx context.Context, name string, src *pgx.ConnConfig) error {
	bin, err := localpg.FindBinDir()
	if err != nil {
		return err
	}
	if err := s.Drop(ctx, name); err != nil {
		return err
	}
	if _, err := s.Admin.Exec(ctx, "CREATE DATABASE "+quote(name)+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create database %s on shard %s: %w", name, s.Name, err)
	}
	dump := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), "--format=custom", "--compress=0", "--no-password")
	dump.Env = pgEnv(src)
	load := exec.CommandContext(ctx, filepath.Join(bin, "pg_restore"), "--exit-on-error", "--no-password",
		"--dbname="+name)
	load.Env = pgEnv(s.ConnConfig(name))
	pipe, err := dump.StdoutPipe()
	if err != nil {
		return err
	}
	load.Stdin = pipe
	var dumpErr, loadErr bytes.Buffer
	dump.Stderr, load.Stderr = &dumpErr, &loadErr
	if err := dump.Start(); err != nil {
		return fmt.Errorf("start pg_dump: %w", err)
	}
	lerr := load.Run()
	derr := dump.Wait()
	if derr != nil {
		return fmt.Errorf("pg_dump of %s: %w: %s", src.Database, derr, firstLine(dumpErr.String()))
	}
	if lerr != nil {
		return fmt.Errorf("pg_restore into %s on shard %s: %w: %s", name, s.Name, lerr, firstLine(loadErr.String()))
	}
	return nil
}

// pgEnv is the libpq environment that connects to c.
func pgEnv(c *pgx.ConnConfig) []string {
	ssl := "disable"
	if c.TLSConfig != nil {
		ssl = "require"
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "PGHOST=" + c.Host, "PGPORT=" + strconv.Itoa(int(c.Port)),
		"PGUSER=" + c.User, "PGDATABASE=" + c.Database, "PGSSLMODE=" + ssl, "PGCONNECT_TIMEOUT=10"}
	if c.Password != "" {
		env = append(env, "PGPASSWORD="+c.Password)
	}
	return env
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
