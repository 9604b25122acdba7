-- What the edge needs from the catalog: tenants' custom domains (served only
-- once the tenant proved it controls them), which path prefixes route to
-- which service, and how long the change log is kept.

-- +goose Up

CREATE TABLE tenant_domains (
    domain      text NOT NULL CHECK (length(domain) BETWEEN 4 AND 253
                    AND domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$'),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    -- The value the tenant must publish (DNS TXT record or HTTP file).
    token       text NOT NULL,
    verified_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, tenant_id)
);
-- A domain serves one tenant: the one that proved control of it first.
CREATE UNIQUE INDEX tenant_domains_verified ON tenant_domains (domain) WHERE verified_at IS NOT NULL;
CREATE INDEX tenant_domains_tenant ON tenant_domains (tenant_id);

-- The change log is pruned after its retention; readers resuming from
-- before this version must reload from a snapshot.
CREATE TABLE change_log_pruned (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO change_log_pruned DEFAULT VALUES;

-- Path prefixes the edge routes to a service, and the product whose
-- tenant database the service serves.
ALTER TABLE services
    ADD COLUMN routes  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN product text REFERENCES products (name);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION change_log_append() RETURNS trigger LANGUAGE plpgsql AS $$
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
    rec := rec - 'dsn' - 'credential_hash' - 'token';
    tid := CASE TG_TABLE_NAME
        WHEN 'tenants' THEN (rec ->> 'id')::uuid
        WHEN 'installations' THEN (rec ->> 'tenant_id')::uuid
        WHEN 'tenant_domains' THEN (rec ->> 'tenant_id')::uuid
        WHEN 'tenant_databases' THEN
            (SELECT i.tenant_id FROM installations i WHERE i.id = (rec ->> 'installation_id')::uuid)
        ELSE NULL
    END;
    INSERT INTO change_log (entity, entity_id, tenant_id, op, data)
    VALUES (TG_TABLE_NAME,
            coalesce(rec ->> 'id', rec ->> 'kid', rec ->> 'name', rec ->> 'domain',
                     (rec ->> 'shard') || '/' || (rec ->> 'product')),
            tid, lower(TG_OP), rec);
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER tenant_domains_change_log AFTER INSERT OR UPDATE OR DELETE ON tenant_domains
    FOR EACH ROW EXECUTE FUNCTION change_log_append();

-- +goose Down
DROP TABLE change_log_pruned;
DROP TABLE tenant_domains;
ALTER TABLE services DROP COLUMN routes, DROP COLUMN product;
