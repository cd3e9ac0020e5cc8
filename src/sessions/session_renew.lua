-- Extend a live session lease to a new expiry, atomically.
--
-- KEYS[1]  the organization's leases (see session_acquire.lua).
-- ARGV     now (µs), new expiry (µs), session id, TTL grace (ms).
-- Returns  {1, live leases}, or {0} if the session holds no live lease.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local id = ARGV[3]
local grace = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
if not redis.call('ZSCORE', key, id) then
  return {0}
end
local n = redis.call('ZCARD', key)
redis.call('ZADD', key, ARGV[2], id)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local ttl = math.ceil((tonumber(last[2]) - now) / 1000)
if ttl < 0 then ttl = 0 end
redis.call('PEXPIRE', key, ttl + grace)
return {1, n}
