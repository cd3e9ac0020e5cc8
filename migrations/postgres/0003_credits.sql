-- Credits (issue #20): one balance per account, `org:<org_id>` or `key:<org_id>:<key_id>`.
-- `period` is the refill period the balance was last topped up in (NULL: never refilled).
CREATE TABLE IF NOT EXISTS api_key_credits (
    account    TEXT PRIMARY KEY,
    balance    BIGINT NOT NULL CHECK (balance >= 0),
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    refill     TEXT NOT NULL CHECK (refill IN ('never', 'daily', 'monthly')),
    refill_day SMALLINT NOT NULL CHECK (refill_day BETWEEN 0 AND 28),
    period     BIGINT,
    updated_at BIGINT NOT NULL
);
