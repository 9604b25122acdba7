package sdk

import (
	"context"
	"errors"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/plinth-platform/plinth/internal/ari"
	"github.com/plinth-platform/plinth/internal/problem"
	"github.com/plinth-platform/plinth/sdk/tenantpool"
)

// TenantDB is one tenant's database of this product. Like a pgxpool.Pool,
// each call borrows a connection for as long as it needs one (a Query until
// its rows are closed or read to the end, a transaction until it commits or
// rolls back), so idle tenants hold no connection.
type TenantDB struct {
	pool *tenantpool.Manager
	key  tenantpool.Key
}

// Exec runs a statement.
func (d *TenantDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := d.pool.Acquire(ctx, d.key)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer c.Release()
	return c.Exec(ctx, sql, args...)
}

// Query runs a query; the connection returns when the rows are closed or
// read to the end.
func (d *TenantDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c, err := d.pool.Acquire(ctx, d.key)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		c.Release()
		return nil, err
	}
	return &borrowedRows{Rows: rows, c: c}, nil
}

// QueryRow runs a query that returns at most one row.
func (d *TenantDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := d.Query(ctx, sql, args...)
	return row{rows: rows, err: err}
}

// Begin starts a transaction; its connection returns at Commit or Rollback.
func (d *TenantDB) Begin(ctx context.Context) (pgx.Tx, error) {
	c, err := d.pool.Acquire(ctx, d.key)
	if err != nil {
		return nil, err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		c.Release()
		return nil, err
	}
	return &borrowedTx{Tx: tx, c: c}, nil
}

// InTx runs fn in a transaction, committing when it returns nil.
func (d *TenantDB) InTx(ctx context.Context, fn func(pgx.Tx) error) error {
	tx, err := d.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

type borrowedRows struct {
	pgx.Rows
	c *tenantpool.Conn
}

func (r *borrowedRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *borrowedRows) Close() {
	r.Rows.Close()
	r.c.Release()
}

type row struct {
	rows pgx.Rows
	err  error
}

func (r row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

type borrowedTx struct {
	pgx.Tx
	c *tenantpool.Conn
}

func (t *borrowedTx) Commit(ctx context.Context) error {
	defer t.c.Release()
	return t.Tx.Commit(ctx)
}

func (t *borrowedTx) Rollback(ctx context.Context) error {
	defer t.c.Release()
	return t.Tx.Rollback(ctx)
}

// WriteError answers a request with the RFC 9457 problem for err: the
// errors of this package get their own status and code, pgx.ErrNoRows is a
// 404, BadRequest a 400, a wait for a connection that timed out a 503,
// anything else a 500 (without its text, which may hold what a client
// should not see).
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var bad badRequest
	p := &problem.Problem{Status: http.StatusInternalServerError, Code: "internal", Detail: "the request failed"}
	switch {
	case errors.Is(err, ErrNoTenant):
		p = &problem.Problem{Status: http.StatusBadRequest, Code: "tenant_required", Detail: err.Error()}
	case errors.Is(err, ErrNoSuchTenant):
		p = &problem.Problem{Status: http.StatusNotFound, Code: "tenant_not_found", Detail: err.Error()}
	case errors.Is(err, ErrNotActive):
		p = &problem.Problem{Status: http.StatusForbidden, Code: "tenant_not_active", Detail: err.Error()}
	case errors.Is(err, ErrNotInstalled):
		p = &problem.Problem{Status: http.StatusNotFound, Code: "product_not_installed", Detail: err.Error()}
	case errors.Is(err, ErrUnavailable), errors.Is(err, tenantpool.ErrTimeout), errors.Is(err, errDatabaseMoved):
		p = &problem.Problem{Status: http.StatusServiceUnavailable, Code: "tenant_unavailable", Detail: "the tenant's data cannot be reached right now; retry shortly"}
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, ErrForeignARI):
		p = &problem.Problem{Status: http.StatusNotFound, Code: "not_found", Detail: "no such resource"}
	case errors.Is(err, ari.ErrInvalid):
		p = &problem.Problem{Status: http.StatusBadRequest, Code: "invalid_ari", Detail: err.Error()}
	case errors.As(err, &bad):
		p = &problem.Problem{Status: http.StatusBadRequest, Code: "invalid_request", Detail: string(bad)}
	case errors.Is(err, pgx.ErrNoRows):
		p = &problem.Problem{Status: http.StatusNotFound, Code: "not_found", Detail: "no such resource"}
	}
	problem.Write(w, r, p)
}

// BadRequest returns an error WriteError answers with 400 and this detail,
// for input a handler refuses.
func BadRequest(detail string) error { return badRequest(detail) }

type badRequest string

func (e badRequest) Error() string { return string(e) }
