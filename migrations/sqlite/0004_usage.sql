-- Usage metering: requests per key by outcome, in minute, hour and day buckets. Written by the
-- last-used flusher, one statement per flush, adding to existing counts; pruned by retention.
-- Times are nanoseconds since the Unix epoch, as in api_keys.
CREATE TABLE IF NOT EXISTS api_key_usage (
    org_id        TEXT    NOT NULL,
    key_id        TEXT    NOT NULL,
    granularity   TEXT    NOT NULL CHECK (granularity IN ('minute', 'hour', 'day')),
    bucket        INTEGER NOT NULL,
    accepted      INTEGER NOT NULL DEFAULT 0,
    rate_limited  INTEGER NOT NULL DEFAULT 0,
    scope         INTEGER NOT NULL DEFAULT 0,
    session_quota INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, granularity, bucket, key_id)
);
CREATE INDEX IF NOT EXISTS api_key_usage_by_age ON api_key_usage (granularity, bucket);
