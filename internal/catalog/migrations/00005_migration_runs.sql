-- Fleet-wide tenant migrations: a run brings every tenant database of a
-- product to a target version, canary first, then wave by wave (tier 3, the
-- least critical, first); each database is one task whose result and
-- error are kept. At most one run per product is active at a time.

-- +goose Up
CREATE TABLE migration_runs (
    id                uuid PRIMARY KEY,
    product           text NOT NULL REFERENCES products (name),
    target_version    bigint NOT NULL CHECK (target_version > 0),
    concurrency       integer NOT NULL CHECK (concurrency BETWEEN 1 AND 256),
    canary            integer NOT NULL CHECK (canary >= 0),
    max_failure_ratio double precision NOT NULL CHECK (max_failure_ratio BETWEEN 0 AND 1),
    -- running: tasks are being worked; paused: an operator paused it;
    -- succeeded: every task done; finished_with_failures: the rest done;
    -- stopped: a canary failed or failures passed the ratio (the rest skipped).
    state             text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'paused', 'succeeded', 'finished_with_failures', 'stopped')),
    error             text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK ((finished_at IS NULL) = (state IN ('running', 'paused')))
);
CREATE UNIQUE INDEX migration_runs_one_active ON migration_runs (product) WHERE state IN ('running', 'paused');

CREATE TABLE migration_tasks (
    run_id       uuid NOT NULL REFERENCES migration_runs (id),
    database_id  uuid NOT NULL REFERENCES tenant_databases (id),
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    wave         integer NOT NULL CHECK (wave >= 0), -- 0: the canaries
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    from_version bigint NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    error        text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, database_id)
);
CREATE INDEX migration_tasks_next ON migration_tasks (run_id, wave, tenant_id) WHERE state = 'pending';

CREATE TRIGGER migration_runs_change_log AFTER INSERT OR UPDATE OR DELETE ON migration_runs
    FOR EACH ROW EXECUTE FUNCTION change_log_append();

-- +goose Down
DROP TABLE migration_tasks;
DROP TABLE migration_runs;
