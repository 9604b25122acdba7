-- Warm-pool sizes are catalog configuration too: their changes reach the
-- change log like every other catalog write, named <shard>/<product>.

-- +goose Up
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
    VALUES (TG_TABLE_NAME,
            coalesce(rec ->> 'id', rec ->> 'kid', rec ->> 'name', (rec ->> 'shard') || '/' || (rec ->> 'product')),
            tid, lower(TG_OP), rec);
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER warm_pools_change_log AFTER INSERT OR UPDATE OR DELETE ON warm_pools
    FOR EACH ROW EXECUTE FUNCTION change_log_append();

-- +goose Down
DROP TRIGGER warm_pools_change_log ON warm_pools;
