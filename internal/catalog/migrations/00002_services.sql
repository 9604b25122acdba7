-- The service registry: services, who may call them and how often, the
-- public keys their sidecars sign with (the key repository), and their live
-- instances (for discovery).

-- +goose Up

CREATE TABLE services (
    name              text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,30}[a-z0-9]$'),
    -- Services whose tokens this service accepts.
    allowed_callers   text[] NOT NULL DEFAULT '{}',
    -- When set, a token ID is accepted once: callers mint one per request.
    replay_protection boolean NOT NULL DEFAULT false,
    -- Requests per second per caller and per tenant; 0 means no limit.
    caller_rate_limit integer NOT NULL DEFAULT 0 CHECK (caller_rate_limit >= 0),
    tenant_rate_limit integer NOT NULL DEFAULT 0 CHECK (tenant_rate_limit >= 0),
    -- Bumped by `plinth keys rotate`: sidecars then make and publish a new key.
    key_generation    integer NOT NULL DEFAULT 1 CHECK (key_generation > 0),
    -- SHA-256 of the registration credential; the credential itself is
    -- shown once, at creation.
    credential_hash   bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Public keys only: private keys never leave the process that made them.
CREATE TABLE service_keys (
    kid        text PRIMARY KEY CHECK (kid ~ '^[a-z][a-z0-9-]{0,30}[a-z0-9]/[A-Za-z0-9_.+-]{1,100}$'),
    service    text NOT NULL REFERENCES services (name) ON DELETE CASCADE,
    alg        text NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    public_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the key is rotated out or its instance stops: tokens signed
    -- with it stay verifiable until then.
    expires_at timestamptz,
    CHECK (starts_with(kid, service || '/'))
);
CREATE INDEX service_keys_service ON service_keys (service);

CREATE TABLE service_instances (
    id         uuid PRIMARY KEY,
    service    text NOT NULL REFERENCES services (name) ON DELETE CASCADE,
    address    text NOT NULL CHECK (address ~ '^https?://'),
    kid        text NOT NULL REFERENCES service_keys (kid),
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX service_instances_service ON service_instances (service);

-- Heartbeats change every few seconds; they are kept apart from
-- service_instances so that only registrations reach the change log.
CREATE TABLE service_instance_heartbeats (
    instance_id uuid PRIMARY KEY REFERENCES service_instances (id) ON DELETE CASCADE,
    seen_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER services_change_log AFTER INSERT OR UPDATE OR DELETE ON services
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER service_keys_change_log AFTER INSERT OR UPDATE OR DELETE ON service_keys
    FOR EACH ROW EXECUTE FUNCTION change_log_append();
CREATE TRIGGER service_instances_change_log AFTER INSERT OR UPDATE OR DELETE ON service_instances
    FOR EACH ROW EXECUTE FUNCTION change_log_append();

-- The change log must not carry credential hashes either.
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
    rec := rec - 'dsn' - 'credential_hash';
    tid := CASE TG_TABLE_NAME
        WHEN 'tenants' THEN (rec ->> 'id')::uuid
        WHEN 'installations' THEN (rec ->> 'tenant_id')::uuid
        WHEN 'tenant_databases' THEN
            (SELECT i.tenant_id FROM installations i WHERE i.id = (rec ->> 'installation_id')::uuid)
        ELSE NULL
    END;
    INSERT INTO change_log (entity, entity_id, tenant_id, op, data)
    VALUES (TG_TABLE_NAME, coalesce(rec ->> 'id', rec ->> 'kid', rec ->> 'name'), tid, lower(TG_OP), rec);
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP TABLE service_instance_heartbeats;
DROP TABLE service_instances;
DROP TABLE service_keys;
DROP TABLE services;
