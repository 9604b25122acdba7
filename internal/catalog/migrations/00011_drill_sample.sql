-- The tenants a drill samples, fixed when it first runs, so that a drill
-- resumed after its worker died checks the same tenants.

-- +goose Up
ALTER TABLE drills ADD COLUMN tenant_ids uuid[];

-- +goose Down
ALTER TABLE drills DROP COLUMN tenant_ids;
