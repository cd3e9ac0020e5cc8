-- Key policies: a reversible disabled flag, metadata (a JSON object), allowed client networks
-- (CIDR text; empty = anywhere) and when the expiry reminder was sent.

ALTER TABLE api_keys
    ADD COLUMN disabled           BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN metadata           JSONB CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    ADD COLUMN allowed_networks   TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN expiry_reminded_at BIGINT;

-- The reminder task asks for keys expiring soon and not yet reminded.
CREATE INDEX IF NOT EXISTS api_keys_expiry_reminder ON api_keys (expires_at)
    WHERE expires_at IS NOT NULL AND expiry_reminded_at IS NULL;

-- Every field a request reads is announced, as revocation is: disabling, enabling, metadata and
-- allowed networks reach every replica's cache by the same push. `last_used_at` and
-- `expiry_reminded_at` alone are not announced.
DROP TRIGGER IF EXISTS api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((OLD.org_id, OLD.name, OLD.hash, OLD.hint, OLD.scopes, OLD.environment, OLD.created_at,
           OLD.expires_at, OLD.revoked_at, OLD.rotated_from, OLD.disabled, OLD.metadata,
           OLD.allowed_networks)
          IS DISTINCT FROM
          (NEW.org_id, NEW.name, NEW.hash, NEW.hint, NEW.scopes, NEW.environment, NEW.created_at,
           NEW.expires_at, NEW.revoked_at, NEW.rotated_from, NEW.disabled, NEW.metadata,
           NEW.allowed_networks))
    EXECUTE FUNCTION api_keys_notify();
