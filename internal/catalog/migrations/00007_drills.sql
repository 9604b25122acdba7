-- Disaster-recovery drills. A drill restores a sample of tenants' databases
-- and the shard's heartbeat database to a recent moment in a scratch server,
-- and checks that each tenant's identity row is there and that the
-- heartbeat is within the recovery point objective of the target. Its
-- results per tenant are how Plinth proves, week after week, that the
-- backups restore.

-- +goose Up
-- When each installation's database was first stamped with its tenant (a
-- step after the tenant becomes active): a drill to an earlier moment
-- would find the database without its tenant. Kept apart from
-- installations so that it never reaches the change log.
CREATE TABLE installation_stamps (
    installation_id uuid PRIMARY KEY REFERENCES installations (id),
    stamped_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation_stamps (installation_id, stamped_at)
    SELECT id, updated_at FROM installations WHERE state = 'ready';

CREATE TABLE drills (
    id          uuid PRIMARY KEY,
    -- How many tenants to sample per drill (NULL: every restorable tenant).
    sample      integer CHECK (sample BETWEEN 1 AND 10000),
    actor       text NOT NULL CHECK (actor <> ''),
    target_time timestamptz NOT NULL,
    -- running, then succeeded (every check passed) or failed (see error and
    -- the results).
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'succeeded', 'failed')),
    error       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((finished_at IS NULL) = (state = 'running'))
);
CREATE INDEX drills_created ON drills (created_at DESC);

-- One checked database of a drill: a tenant's (tenant_id set) or a shard's
-- heartbeat (tenant_id NULL).
CREATE TABLE drill_results (
    drill_id         uuid NOT NULL REFERENCES drills (id),
    shard            text NOT NULL REFERENCES shards (name),
    database_name    text NOT NULL,
    tenant_id        uuid REFERENCES tenants (id),
    tier             smallint,
    ok               boolean NOT NULL,
    detail           text NOT NULL DEFAULT '',
    -- target_time minus the heartbeat found in the restored copy.
    heartbeat_lag_ms bigint,
    restore_ms       bigint NOT NULL,
    replay_ms        bigint NOT NULL,
    checked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (drill_id, shard, database_name)
);
CREATE INDEX drill_results_tenant ON drill_results (tenant_id, checked_at DESC) WHERE ok;

-- +goose Down
DROP TABLE drill_results;
DROP TABLE drills;
DROP TABLE installation_stamps;
