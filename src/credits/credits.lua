-- One credit operation on one account, atomically: refill if a period has passed, then spend,
-- refund or only read. The same as `MemoryCredits`.
--
-- KEYS[1]  the key's account, KEYS[2] its organization's: hashes {b, a, r, d, p}: balance,
--          refill amount, refill ("never", "daily", "monthly"), day of the month, and the
--          period last refilled in ("-" for none). The key's account is used if it exists.
-- ARGV     operation ("spend", "refund", "peek"), amount, now as days since 1970, as months
--          since year 0 (year * 12 + month - 1), and the day of the month.
-- Returns  {-1} if neither account exists; else {ok 0/1, balance, amount, refill, day}.
--          A spend that would take the balance below zero changes nothing and answers ok 0.
local op = ARGV[1]
local n = tonumber(ARGV[2])
local days, months, dom = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  key = KEYS[2]
  if not key or redis.call('EXISTS', key) == 0 then return {-1} end
end
local h = redis.call('HMGET', key, 'b', 'a', 'r', 'd', 'p')
local b, a, r, d = tonumber(h[1]), tonumber(h[2]), h[3], tonumber(h[4])
local period = nil
if r == 'daily' then
  period = days
elseif r == 'monthly' then
  period = months
  if dom < d then period = months - 1 end
end
if period and (h[5] == '-' or period > tonumber(h[5])) then
  if a > b then b = a end
  redis.call('HSET', key, 'b', string.format('%.0f', b), 'p', string.format('%.0f', period))
end
local ok = 1
if op == 'spend' then
  if b >= n then
    b = b - n
    redis.call('HSET', key, 'b', string.format('%.0f', b))
  else
    ok = 0
  end
elseif op == 'refund' then
  b = b + n
  redis.call('HSET', key, 'b', string.format('%.0f', b))
end
return {ok, b, a, r, d}
