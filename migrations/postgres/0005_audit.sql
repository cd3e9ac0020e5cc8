-- The audit log (issue #18): who created, revoked, rotated or changed which key, changed a plan
-- or set credits. Appended after each change by the key manager; read newest first per
-- organization. `id` sorts by time (`aud_` + milliseconds in hex + sequence + random), so
-- paging is `id < cursor ORDER BY id DESC`. `at` is nanoseconds since the Unix epoch, as in
-- api_keys; `detail` is a small JSON object, as text. Ids compare bytewise (COLLATE "C").
CREATE TABLE IF NOT EXISTS api_key_audit_log (
    id         TEXT   COLLATE "C" PRIMARY KEY,
    org_id     TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    actor_type TEXT   NOT NULL,
    actor_id   TEXT,
    action     TEXT   NOT NULL,
    key_id     TEXT,
    detail     TEXT   NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS api_key_audit_log_by_org ON api_key_audit_log (org_id, id);
