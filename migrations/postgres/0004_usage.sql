-- Usage metering: requests per key by outcome, in minute, hour and day buckets. Written by the
-- last-used flushers of every replica, one statement per flush, adding to existing counts (so
-- replicas add up); pruned by retention. Times are nanoseconds since the Unix epoch, as in
-- api_keys.
CREATE TABLE IF NOT EXISTS api_key_usage (
    org_id        TEXT   NOT NULL,
    key_id        TEXT   NOT NULL,
    granularity   TEXT   NOT NULL CHECK (granularity IN ('minute', 'hour', 'day')),
    bucket        BIGINT NOT NULL,
    accepted      BIGINT NOT NULL DEFAULT 0,
    rate_limited  BIGINT NOT NULL DEFAULT 0,
    scope         BIGINT NOT NULL DEFAULT 0,
    session_quota BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, granularity, bucket, key_id)
);
CREATE INDEX IF NOT EXISTS api_key_usage_by_age ON api_key_usage (granularity, bucket);
