-- Free a session's slot. KEYS[1]: the organization's leases; ARGV: now (µs), session id.
-- Returns 1 if the session held a live lease, else 0.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[2])
