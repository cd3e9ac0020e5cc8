-- Take (or extend) a session lease within the organization's limit, atomically.
--
-- KEYS[1]  the organization's leases: a sorted set of session ids scored by expiry (Unix µs).
-- ARGV     now (µs), expiry of this lease (µs), limit, session id, TTL grace (ms).
-- Returns  {1, live leases after}, or {0, live leases, µs until the earliest expires}.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local exp = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local id = ARGV[4]
local grace = tonumber(ARGV[5])

redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])  -- expired: expiry <= now
local held = redis.call('ZSCORE', key, id)
local n = redis.call('ZCARD', key)
if not held and n >= limit then
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local wait = 0
  if first[2] then wait = tonumber(first[2]) - now end
  return {0, n, wait}
end
if exp <= now then
  -- A zero lease would expire at once: grant nothing, hold nothing.
  if held then
    redis.call('ZREM', key, id)
    n = n - 1
  end
  return {1, n}
end
if not held then
  n = n + 1
  redis.call('ZADD', key, ARGV[2], id)
elseif tonumber(held) < exp then
  redis.call('ZADD', key, ARGV[2], id)
end
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) / 1000) + grace)
return {1, n}
