// Package catalog is the source of truth for Plinth's fleet and tenants:
// regions, shards, products and their tenant-database migrations, tenants,
// installations, the tenant databases Plinth creates on shards, the change
// log, the audit log, operations and idempotency keys.
//
// It owns the control database's schema (goose migrations embedded in the
// binary) and keeps its invariants there as constraints and triggers: slug
// rules, the tenant state machine, one live database per installation, and a
// change log whose versions follow commit order. Go code validates the same
// rules first only to give callers a clear error; the database is what holds.
package catalog
