-- The catalog: regions, shards, products, tenants, installations, the tenant
-- databases Plinth creates, the change log, the audit log, operations and
-- idempotency keys. Invariants live here as constraints and triggers, so that
-- no code path (nor a hand-run UPDATE) can break them.

-- +goose Up

CREATE TABLE regions (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,30}[a-z0-9]$'),
    edge_url   text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shards (
    name              text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,30}[a-z0-9]$'),
    region            text NOT NULL REFERENCES regions (name),
    -- The DSN of the shard's maintenance database. It can hold a password,
    -- so the change log never copies it and the API shows it redacted.
    dsn               text NOT NULL CHECK (dsn <> ''),
    capacity          integer NOT NULL CHECK (capacity > 0),
    draining          boolean NOT NULL DEFAULT false,
    health            text NOT NULL DEFAULT 'healthy' CHECK (health IN ('healthy', 'unhealthy')),
    health_error      text NOT NULL DEFAULT '',
    health_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Probe bookkeeping changes every few seconds; it is kept apart from shards
-- so that only a change of health reaches the change log.
CREATE TABLE shard_probes (
    shard                text PRIMARY KEY REFERENCES shards (name) ON DELETE CASCADE,
    checked_at           timestamptz NOT NULL,
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text NOT NULL DEFAULT ''
);

CREATE TABLE products (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{1,29}$'),
    current_version bigint NOT NULL DEFAULT 0 CHECK (current_version >= 0),
    warm_pool_size  integer NOT NULL DEFAULT 0 CHECK (warm_pool_size BETWEEN 0 AND 1000),
    is_default      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one default product (the one `plinth tenant create` enables).
CREATE UNIQUE INDEX products_one_default ON products ((true)) WHERE is_default;

-- Tenant-database migrations of a product, in goose's SQL format. History is
-- append-only: a registered version never changes.
CREATE TABLE product_migrations (
    product    text NOT NULL REFERENCES products (name),
    version    bigint NOT NULL CHECK (version > 0),
    name       text NOT NULL CHECK (name <> ''),
    sql        text NOT NULL,
    checksum   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product, version)
);

CREATE TABLE warm_pools (
    shard   text NOT NULL REFERENCES shards (name) ON DELETE CASCADE,
    product text NOT NULL REFERENCES products (name),
    size    integer NOT NULL CHECK (size BETWEEN 0 AND 1000),
    PRIMARY KEY (shard, product)
);

CREATE TABLE reserved_slugs (
    slug text PRIMARY KEY
);
INSERT INTO reserved_slugs (slug) VALUES
    ('abuse'), ('account'), ('accounts'), ('admin'), ('administrator'), ('api'),
    ('app'), ('apps'), ('assets'), ('auth'), ('billing'), ('blog'), ('cdn'),
    ('console'), ('control'), ('dashboard'), ('dev'), ('docs'), ('edge'),
    ('ftp'), ('graphql'), ('health'), ('help'), ('hostmaster'), ('imap'),
    ('internal'), ('localhost'), ('login'), ('logout'), ('mail'), ('metrics'),
    ('null'), ('oauth'), ('plinth'), ('pop'), ('postmaster'), ('root'),
    ('security'), ('signup'), ('smtp'), ('sso'), ('static'), ('status'),
    ('support'), ('system'), ('undefined'), ('webmail'), ('webmaster'), ('www');

CREATE TABLE tenants (
    id                  uuid PRIMARY KEY,
    -- A DNS label: 3-63 characters, lower-case letters, digits and inner
    -- hyphens; never an IDN (xn--) or other "??--" label.
    slug                text NOT NULL CHECK (
                            slug ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'
                            AND substr(slug, 3, 2) <> '--'),
    display_name        text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    region              text NOT NULL REFERENCES regions (name),
    tier                smallint NOT NULL CHECK (tier BETWEEN 0 AND 3),
    state               text NOT NULL CHECK (state IN (
                            'provisioning', 'active', 'suspended', 'deactivated', 'deleted',
                            'purged', 'failed', 'moving', 'restoring')),
    -- Why the tenant is in its state (a failure reason, a suspension reason).
    state_reason        text NOT NULL DEFAULT '',
    -- The state to return to on undelete.
    state_before_delete text CHECK (state_before_delete IN ('active', 'suspended', 'deactivated', 'failed')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    purge_after         timestamptz,
    purged_at           timestamptz,
    CHECK ((state IN ('deleted', 'purged')) = (deleted_at IS NOT NULL)),
    CHECK (state <> 'deleted' OR (purge_after IS NOT NULL AND state_before_delete IS NOT NULL)),
    CHECK ((state = 'purged') = (purged_at IS NOT NULL))
);
-- A slug names one tenant among those not purged.
CREATE UNIQUE INDEX tenants_slug_live ON tenants (slug) WHERE state <> 'purged';
CREATE INDEX tenants_state ON tenants (state, id);
CREATE INDEX tenants_region ON tenants (region, id);
CREATE INDEX tenants_purge_after ON tenants (purge_after) WHERE state = 'deleted';

-- +goose StatementBegin
CREATE FUNCTION tenants_slug_not_reserved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM reserved_slugs WHERE slug = NEW.slug) THEN
        RAISE EXCEPTION 'slug "%" is reserved', NEW.slug
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tenants_slug_reserved';
    END IF;
    RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER tenants_slug_not_reserved BEFORE INSERT OR UPDATE OF slug ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_slug_not_reserved();

-- The tenant lifecycle as data. The Go state machine (catalog.Transitions)
-- must agree with this table; a test checks that they do.
CREATE TABLE tenant_transitions (
    from_state text NOT NULL,
    to_state   text NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO tenant_transitions (from_state, to_state) VALUES
    ('provisioning', 'active'), ('provisioning', 'failed'),
    ('failed', 'provisioning'), ('failed', 'deleted'),
    ('active', 'suspended'), ('active', 'deactivated'), ('active', 'deleted'),
    ('active', 'moving'), ('active', 'restoring'),
    ('suspended', 'active'), ('suspended', 'deactivated'), ('suspended', 'deleted'),
    ('deactivated', 'active'), ('deactivated', 'deleted'),
    ('deleted', 'active'), ('deleted', 'suspended'), ('deleted', 'deactivated'),
    ('deleted', 'failed'), ('deleted', 'purged'),
    ('moving', 'active'), ('restoring', 'active');

-- +goose StatementBegin
CREATE FUNCTION tenants_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'provisioning' THEN
            RAISE EXCEPTION 'a new tenant starts in state provisioning, not %', NEW.state
                USING ERRCODE = 'PL409';
        END IF;
    ELSIF NEW.state <> OLD.state AND NOT EXISTS (
        SELECT 1 FROM tenant_transitions WHERE from_state = OLD.state AND to_state = NEW.state
    ) THEN
        RAISE EXCEPTION 'illegal tenant transition % -> %', OLD.state, NEW.state
            USING ERRCODE = 'PL409';
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.id <> OLD.id OR NEW.created_at <> OLD.created_at) THEN
        RAISE EXCEPTION 'tenant id and created_at are immutable' USING ERRCODE = 'PL409';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER tenants_check_transition BEFORE INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_check_transition();

CREATE TABLE installations (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    product    text NOT NULL REFERENCES products (name),
    -- pending: its database is being placed, created or claimed;
    -- ready: its database exists and carries the tenant's identity;
    -- purged: its database was dropped with the tenant.
    state      text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ready', 'purged')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, product)
);

-- Every database Plinth creates on a shard, recorded before it is created
-- (state creating) so that a crash between the two is reconciled and nothing
-- is orphaned. Names derive from the row's ID, never from a tenant's slug.
CREATE TABLE tenant_databases (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^t_[0-9a-f]{32}$' AND octet_length(name) <= 63),
    shard           text NOT NULL REFERENCES shards (name),
    product         text NOT NULL REFERENCES products (name),
    -- creating: intent recorded, the database may or may not exist yet;
    -- warm: created, migrated and unassigned (the warm pool);
    -- assigned: belongs to installation_id;
    -- dropping: to be dropped; dropped: gone (the row stays as history).
    state           text NOT NULL CHECK (state IN ('creating', 'warm', 'assigned', 'dropping', 'dropped')),
    schema_version  bigint NOT NULL CHECK (schema_version >= 0),
    installation_id uuid REFERENCES installations (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'assigned' OR installation_id IS NOT NULL),
    CHECK (state <> 'warm' OR installation_id IS NULL)
);
-- An installation owns at most one live database.
CREATE UNIQUE INDEX tenant_databases_one_per_installation ON tenant_databases (installation_id)
    WHERE state IN ('creating', 'assigned');
CREATE INDEX tenant_databases_warm ON tenant_databases (shard, product, schema_version, created_at)
    WHERE state = 'warm';
CREATE INDEX tenant_databases_live ON tenant_databases (shard) WHERE state <> 'dropped';
CREATE INDEX tenant_databases_pending ON tenant_databases (state, updated_at)
    WHERE state IN ('creating', 'dropping');

-- The change log: one row per catalog change, written by triggers in the same
-- transaction as the change (a transactional outbox). `id` is insertion
-- order; `version` is commit order, assigned at commit (see below), so a
-- reader that remembers "after version N" never skips a change that commits
-- later with a smaller number.
CREATE TABLE change_log (
    id           bigserial PRIMARY KEY,
    version      bigint UNIQUE,
    entity       text NOT NULL,
    entity_id    text NOT NULL,
    tenant_id    uuid,
    op           text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    data         jsonb NOT NULL,
    committed_at timestamptz
);
CREATE SEQUENCE change_log_version_seq;
CREATE INDEX change_log_tenant ON change_log (tenant_id, version) WHERE tenant_id IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION change_log_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rec jsonb;
    tid uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        rec := to_jsonb(OLD);
    ELSE
        IF TG_OP = 'UPDATE' AND to_jsonb(OLD) = to_jsonb(NEW) THEN
            RETURN NULL;
        END IF;
        rec := to_jsonb(NEW);
    END IF;
    rec := rec - 'dsn';
    tid := CASE TG_TABLE_NAME
        WHEN 'tenants' THEN (rec ->> 'id')::uuid
        WHEN 'installations' THEN (rec ->> 'tenant_id')::uuid
        WHEN 'tenant_databases' THEN
            (SELECT i.tenant_id FROM installations i WHERE i.id = (rec ->> 'installation_id')::uuid)
        ELSE NULL
    END;
    INSERT INTO change_log (entity, entity_id, tenant_id, op, data)
    VALUES (TG_TABLE_NAME, coalesce(rec ->> 'id', rec ->> 'name'), tid, lower(TG_OP), rec);
    RETURN NULL;
END $$;

-- Runs at commit (a deferred constraint trigger). The transaction-scoped
-- advisory lock serialises the tail of every catalog-writing transaction, so
-- versions are handed out in commit order and a transaction's changes become
-- visible before the next one can take a version.
CREATE FUNCTION change_log_assign_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7083526355624558);
    UPDATE change_log
       SET version = nextval('change_log_version_seq'), committed_at = clock_timestamp()
     WHERE id = NEW.id;
    PERFORM pg_notify('plinth_changes', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE CONSTRAINT TRIGGER change_log_assign_version AFTER INSERT ON change_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION change_log_assign_version();

CREATE TRIGGER regions_change_log AFTER INSERT OR UPDATE OR DELETE ON regions
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER shards_change_log AFTER INSERT OR UPDATE OR DELETE ON shards
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER products_change_log AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER tenants_change_log AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER installations_change_log AFTER INSERT OR UPDATE OR DELETE ON installations
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER tenant_databases_change_log AFTER INSERT OR UPDATE OR DELETE ON tenant_databases
    FOR EACH ROW EXECUTE FUNCTION change_log_append();

-- Who did what to which target, when, and why.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL CHECK (actor <> ''),
    action      text NOT NULL CHECK (action <> ''),
    target_kind text NOT NULL,
    target_id   text NOT NULL,
    from_state  text NOT NULL DEFAULT '',
    to_state    text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    request_id  text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id, id);

-- Long-running work the API accepted (202) and a worker carries out.
CREATE TABLE operations (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL,
    tenant_id   uuid REFERENCES tenants (id),
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'succeeded', 'failed')),
    error       text NOT NULL DEFAULT '',
    job_id      bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((state = 'running') = (finished_at IS NULL))
);
CREATE INDEX operations_tenant ON operations (tenant_id, created_at);
CREATE INDEX operations_running ON operations (kind, created_at) WHERE state = 'running';

-- +goose StatementBegin
CREATE FUNCTION operations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state <> 'running' THEN
        PERFORM pg_notify('plinth_operations', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER operations_notify AFTER INSERT OR UPDATE OF state ON operations
    FOR EACH ROW EXECUTE FUNCTION operations_notify();

-- Responses to POSTs that carried an Idempotency-Key, replayed on a retry.
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea NOT NULL,
    status      integer NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
DROP TABLE operations;
DROP FUNCTION operations_notify;
DROP TABLE audit_log;
DROP TABLE change_log;
DROP SEQUENCE change_log_version_seq;
DROP TABLE tenant_databases;
DROP TABLE installations;
DROP TABLE tenant_transitions;
DROP TABLE tenants;
DROP FUNCTION tenants_check_transition;
DROP FUNCTION tenants_slug_not_reserved;
DROP TABLE reserved_slugs;
DROP TABLE warm_pools;
DROP TABLE product_migrations;
DROP TABLE products;
DROP TABLE shard_probes;
DROP TABLE shards;
DROP TABLE regions;
DROP FUNCTION change_log_assign_version;
DROP FUNCTION change_log_append;
