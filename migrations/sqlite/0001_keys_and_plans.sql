-- tower-api-key schema, SQLite. Applied by `SqliteStore::migrate()`.
-- Timestamps are unix nanoseconds; `hash` is the SHA-256 of the full key, never the key;
-- `scopes` are space-separated (scopes never contain spaces; '' = full access).

CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    org_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    hash         BLOB NOT NULL CHECK (length(hash) = 32),
    hint         TEXT NOT NULL,
    scopes       TEXT NOT NULL DEFAULT '',
    environment  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    rotated_from TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS api_keys_hash_key ON api_keys (hash);
CREATE INDEX IF NOT EXISTS api_keys_org_created ON api_keys (org_id, created_at DESC);

CREATE TABLE IF NOT EXISTS api_key_org_plans (
    org_id             TEXT PRIMARY KEY NOT NULL,
    plan               TEXT NOT NULL CHECK (plan IN ('free', 'paid', 'enterprise')),
    quota_requests     INTEGER,
    quota_period_nanos INTEGER,
    quota_sessions     INTEGER,
    updated_at         INTEGER NOT NULL
);
