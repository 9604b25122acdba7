package tenantdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// HeartbeatDatabase is the small database on every shard whose one row
// Plinth stamps every few seconds. A drill restores it with the tenants it
// samples: the heartbeat found in the restored copy, against the target
// time, is the recovery point the backups really achieve.
const HeartbeatDatabase = "plinth_heartbeat"

// Heartbeat holds one connection to a shard's heartbeat database.
type Heartbeat struct {
	shard *Shard
	conn  *pgx.Conn
}

// NewHeartbeat returns the shard's heartbeat; Stamp connects on first use.
func (s *Shard) NewHeartbeat() *Heartbeat { return &Heartbeat{shard: s} }

// Stamp writes the current time into the heartbeat row, creating the
// database and its table first if they do not exist. A failed stamp drops
// the connection; the next one reconnects.
func (h *Heartbeat) Stamp(ctx context.Context) error {
	if h.conn == nil {
		if err := h.connect(ctx); err != nil {
			return err
		}
	}
	_, err := h.conn.Exec(ctx, `INSERT INTO heartbeat (id, at) VALUES (1, clock_timestamp())
		ON CONFLICT (id) DO UPDATE SET at = excluded.at`)
	if err != nil {
		h.Close()
		return fmt.Errorf("stamp the heartbeat of shard %s: %w", h.shard.Name, err)
	}
	return nil
}

func (h *Heartbeat) connect(ctx context.Context) error {
	_, err := h.shard.Admin.Exec(ctx, "CREATE DATABASE "+quote(HeartbeatDatabase))
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database
		return fmt.Errorf("create the heartbeat database on shard %s: %w", h.shard.Name, err)
	}
	conn, err := h.shard.Connect(ctx, HeartbeatDatabase)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS heartbeat (
		id integer PRIMARY KEY CHECK (id = 1), at timestamptz NOT NULL)`); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("create the heartbeat table on shard %s: %w", h.shard.Name, err)
	}
	h.conn = conn
	return nil
}

// Close closes the heartbeat's connection.
func (h *Heartbeat) Close() {
	if h.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = h.conn.Close(ctx)
		h.conn = nil
	}
}

// ReadHeartbeat returns the heartbeat recorded in the heartbeat database
// conn is connected to (a drill's restored copy).
func ReadHeartbeat(ctx context.Context, conn *pgx.Conn) (time.Time, error) {
	var at time.Time
	if err := conn.QueryRow(ctx, `SELECT at FROM heartbeat WHERE id = 1`).Scan(&at); err != nil {
		return time.Time{}, fmt.Errorf("read heartbeat: %w", err)
	}
	return at, nil
}
