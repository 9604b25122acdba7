-- Per-tenant point-in-time restores. A restore brings installations'
-- databases back as they were at a moment, from the shards' backups: each
-- database is copied out of a scratch server into a new database on its live
-- shard, then swapped in. The database it replaces is kept (state replaced)
-- so that the swap can be undone; an undo is a restore whose copy already
-- exists.

-- +goose Up
ALTER TABLE tenant_databases DROP CONSTRAINT tenant_databases_state_check;
-- replaced: swapped out by a restore; kept, still naming its installation,
-- until retention drops it or an undo swaps it back.
ALTER TABLE tenant_databases ADD CONSTRAINT tenant_databases_state_check
    CHECK (state IN ('creating', 'warm', 'assigned', 'dropping', 'dropped', 'replaced'));

-- A suspended or deactivated tenant can be restored too, and returns to its
-- state afterwards.
INSERT INTO tenant_transitions (from_state, to_state) VALUES
    ('suspended', 'restoring'), ('deactivated', 'restoring'),
    ('restoring', 'suspended'), ('restoring', 'deactivated');

CREATE TABLE restores (
    id          uuid PRIMARY KEY,
    -- restore: from backups to target_time; undo: swap the databases the
    -- last restore replaced back in.
    kind        text NOT NULL CHECK (kind IN ('restore', 'undo')),
    target_time timestamptz,
    concurrency integer NOT NULL CHECK (concurrency BETWEEN 1 AND 32),
    actor       text NOT NULL CHECK (actor <> ''),
    -- running, then succeeded (every item swapped), failed (none was) or
    -- finished_with_failures.
    state       text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'succeeded', 'failed', 'finished_with_failures')),
    error       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((finished_at IS NULL) = (state = 'running')),
    CHECK ((kind = 'restore') = (target_time IS NOT NULL))
);
CREATE INDEX restores_running ON restores (created_at) WHERE state = 'running';

-- One installation's database in a restore.
CREATE TABLE restore_items (
    restore_id          uuid NOT NULL REFERENCES restores (id),
    installation_id     uuid NOT NULL REFERENCES installations (id),
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    product             text NOT NULL,
    shard               text NOT NULL REFERENCES shards (name),
    -- The database the installation has now, which the restore replaces.
    current_database_id uuid NOT NULL REFERENCES tenant_databases (id),
    -- The database that was the installation's at the target time: its
    -- name is what the backups hold.
    source_database_id  uuid NOT NULL REFERENCES tenant_databases (id),
    source_database     text NOT NULL,
    -- The copy (recorded before it is created), or for an undo the
    -- replaced database that comes back.
    restored_database_id uuid REFERENCES tenant_databases (id),
    -- The tenant's state when the restore began, to return it to.
    prior_state         text NOT NULL,
    -- pending: to copy; copied: the copy exists, verified; swapped: the
    -- installation uses it; failed: see error (nothing was swapped).
    state               text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'copied', 'swapped', 'failed')),
    error               text NOT NULL DEFAULT '',
    attempts            integer NOT NULL DEFAULT 0,
    -- How long each step took, in milliseconds (the scratch restore and WAL
    -- replay are per shard, shared by the items of that shard).
    restore_ms          bigint,
    replay_ms           bigint,
    copy_ms             bigint,
    swap_ms             bigint,
    swapped_at          timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (restore_id, installation_id),
    CHECK ((state = 'swapped') = (swapped_at IS NOT NULL))
);
CREATE INDEX restore_items_active ON restore_items (tenant_id) WHERE state IN ('pending', 'copied');
CREATE INDEX restore_items_history ON restore_items (installation_id, swapped_at) WHERE state = 'swapped';

-- +goose Down
DROP TABLE restore_items;
DROP TABLE restores;
DELETE FROM tenant_transitions WHERE (from_state, to_state) IN
    (('suspended', 'restoring'), ('deactivated', 'restoring'), ('restoring', 'suspended'), ('restoring', 'deactivated'));
ALTER TABLE tenant_databases DROP CONSTRAINT tenant_databases_state_check;
ALTER TABLE tenant_databases ADD CONSTRAINT tenant_databases_state_check
    CHECK (state IN ('creating', 'warm', 'assigned', 'dropping', 'dropped'));
