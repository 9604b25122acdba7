-- A deleted tenant, and a purged one while its backups last, can be
-- restored: its databases come back from the backups and it returns to the
-- state it had before it was deleted. It never passes through restoring (a
-- deleted tenant takes no requests), so the swap moves it straight from
-- deleted or purged to that state.

-- A restore can also go into a new tenant for inspection (--as), leaving
-- the tenant it restores untouched.

-- +goose Up
-- The state the tenant returns to after the swap, when it is not the one
-- it had when the restore began (prior_state): a deleted or purged tenant's
-- state before it was deleted.
ALTER TABLE restore_items ADD COLUMN return_state text
    CHECK (return_state IN ('active', 'suspended', 'deactivated'));

-- The new tenant a restore goes into instead (provisioning until its swap,
-- then active; failed if the restore fails), and per item the new tenant's
-- installation that the restored database is assigned to.
ALTER TABLE restores ADD COLUMN as_tenant_id uuid REFERENCES tenants (id);
ALTER TABLE restore_items ADD COLUMN as_installation_id uuid REFERENCES installations (id);

INSERT INTO tenant_transitions (from_state, to_state) VALUES
    ('purged', 'active'), ('purged', 'suspended'), ('purged', 'deactivated');

-- +goose Down
DELETE FROM tenant_transitions WHERE from_state = 'purged';
ALTER TABLE restore_items DROP COLUMN as_installation_id, DROP COLUMN return_state;
ALTER TABLE restores DROP COLUMN as_tenant_id;
