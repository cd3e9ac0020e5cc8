-- tower-api-key schema, PostgreSQL. Applied by `PostgresStore::migrate()`.
-- Timestamps are unix nanoseconds (BIGINT); `hash` is the SHA-256 of the full key, never the key.

CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    hash         BYTEA NOT NULL CHECK (octet_length(hash) = 32),
    hint         TEXT NOT NULL,
    scopes       TEXT[] NOT NULL DEFAULT '{}',
    environment  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    rotated_from TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS api_keys_hash_key ON api_keys (hash);
CREATE INDEX IF NOT EXISTS api_keys_org_created ON api_keys (org_id, created_at DESC);

CREATE TABLE IF NOT EXISTS api_key_org_plans (
    org_id             TEXT PRIMARY KEY,
    plan               TEXT NOT NULL CHECK (plan IN ('free', 'paid', 'enterprise')),
    quota_requests     BIGINT,
    quota_period_nanos BIGINT,
    quota_sessions     BIGINT,
    updated_at         BIGINT NOT NULL
);

-- Cache invalidation: every change a cache cares about is announced on channel `tower_api_key`
-- by a trigger, so it is sent in the same transaction as the change (delivered on commit), by
-- whatever made it: the library, a migration, an admin's UPDATE. `last_used_at` alone is not
-- announced. Payload: {"s": schema, "h": hex hash} or {"s": schema, "o": org id}.

CREATE OR REPLACE FUNCTION api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('tower_api_key',
            json_build_object('s', TG_TABLE_SCHEMA, 'h', encode(OLD.hash, 'hex'))::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.hash IS DISTINCT FROM OLD.hash) THEN
        PERFORM pg_notify('tower_api_key',
            json_build_object('s', TG_TABLE_SCHEMA, 'h', encode(NEW.hash, 'hex'))::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_insert_delete
    AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();

CREATE TRIGGER api_keys_notify_update
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.org_id, OLD.name, OLD.hash, OLD.hint, OLD.scopes, OLD.environment, OLD.created_at,
           OLD.expires_at, OLD.revoked_at, OLD.rotated_from)
          IS DISTINCT FROM
          (NEW.org_id, NEW.name, NEW.hash, NEW.hint, NEW.scopes, NEW.environment, NEW.created_at,
           NEW.expires_at, NEW.revoked_at, NEW.rotated_from))
    EXECUTE FUNCTION api_keys_notify();

CREATE OR REPLACE FUNCTION api_key_org_plans_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    org TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        org := OLD.org_id;
    ELSE
        org := NEW.org_id;
    END IF;
    PERFORM pg_notify('tower_api_key', json_build_object('s', TG_TABLE_SCHEMA, 'o', org)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_key_org_plans_notify
    AFTER INSERT OR UPDATE OR DELETE ON api_key_org_plans
    FOR EACH ROW EXECUTE FUNCTION api_key_org_plans_notify();
