-- Key policies: a reversible disabled flag, metadata (JSON object text), allowed client
-- networks (CIDRs separated by spaces; '' = anywhere) and when the expiry reminder was sent.

ALTER TABLE api_keys ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1));
ALTER TABLE api_keys ADD COLUMN metadata TEXT;
ALTER TABLE api_keys ADD COLUMN allowed_networks TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expiry_reminded_at INTEGER;

-- The reminder task asks for keys expiring soon and not yet reminded.
CREATE INDEX IF NOT EXISTS api_keys_expiry_reminder ON api_keys (expires_at)
    WHERE expires_at IS NOT NULL AND expiry_reminded_at IS NULL;
