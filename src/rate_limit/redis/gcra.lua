-- GCRA for one organization, atomically: the same decision as `Gcra::decide` in gcra.rs.
--
-- KEYS[2]  (optional) the organization's state under several policies, carried over when
--          KEYS[1] is absent (see below).
-- KEYS[1]  the organization's state: a hash {s, f, q}, its TAT as whole seconds `s` plus `f`
--          units of the second, and `q`, the quota it was written under ("limit:period_ns").
-- ARGV     q, units per second U, limit N, interval T, capacity N*T (T and N*T in units),
--          retry-after of an inadmissible cost (s), cost, now (s), now (units), TTL grace (ms),
--          room: the units from now to the end of time (2^63 - 1 ns, in 2262; capped at 2^52),
--          need_max: what cost * T is held at (u64::MAX ns, as the capacity; capped at 2^52),
--          then, only to carry a state over to a new quota: the expected s, f, q, the new s, f.
-- Returns  {allowed 0/1, remaining, reset (Unix s), retry-after (s), TAT - now (units)}, or
--          {2, s, f, q} when the state was written under another quota and is not idle: the
--          caller converts it (exactly as the memory backend does) and calls again with the
--          carry arguments.
--
-- Lua numbers are doubles: every quantity below is an integer under 2^53 (the caller picks
-- units so that the capacity stays under 2^52), so all of this arithmetic is exact.
--
-- The end of time is the memory backend's: a TAT that would pass it is held there, and a TAT
-- held there refuses every request costing cells (clock readings past it are sent as it).
local key = KEYS[1]
local q = ARGV[1]
local U = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local period_secs = tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
local now_s = tonumber(ARGV[8])
local now_f = tonumber(ARGV[9])
local grace = tonumber(ARGV[10])
local room = tonumber(ARGV[11])
local need_max = tonumber(ARGV[12])

-- floor(a / b), exactly, for integers 0 <= a and 0 < b
local function fdiv(a, b)
  local r = math.floor(a / b)
  if r * b > a then
    r = r - 1
  elseif (r + 1) * b <= a then
    r = r + 1
  end
  return r
end

local function cdiv(a, b)
  local r = fdiv(a, b)
  if r * b < a then r = r + 1 end
  return r
end

local function int(x)
  return string.format('%.0f', x)
end

local st = redis.call('HMGET', key, 's', 'f', 'q')
local carried = false
-- KEYS[2], if given: the organization's state under several policies (gcra_many.lua), carried
-- over when this one-policy state is absent. The caller converts it; ARGV[13] = 'set' then
-- brings the expected set state (q, k, its 2k fields) and the new s, f.
local set_key = KEYS[2]
if not st[1] and set_key then
  local h = redis.call('HGETALL', set_key)
  if #h > 0 then
    local t = {}
    for i = 1, #h, 2 do t[h[i]] = h[i + 1] end
    local k = tonumber(t.n) or 0
    if ARGV[13] == 'set' then
      local ok = t.q == ARGV[14] and tonumber(ARGV[15]) == k
      for i = 1, k do
        if ok and (t['s' .. i] ~= ARGV[14 + 2 * i] or t['f' .. i] ~= ARGV[15 + 2 * i]) then
          ok = false
        end
      end
      if ok then
        st = {ARGV[16 + 2 * k], ARGV[17 + 2 * k], q}
        redis.call('HSET', key, 's', st[1], 'f', st[2], 'q', q)
        redis.call('DEL', set_key)
        carried = true
      end
    end
    if not carried then
      local idle = true
      for i = 1, k do
        if tonumber(t['s' .. i]) >= tonumber(ARGV[8]) then idle = false end
      end
      if not idle then
        local reply = {3, t.q, k}
        for i = 1, k do
          reply[#reply + 1] = t['s' .. i]
          reply[#reply + 1] = t['f' .. i]
        end
        return reply
      end
      -- Idle: nothing to carry, and it must not outlive this state (as in memory).
      redis.call('DEL', set_key)
    end
  end
end
if ARGV[13] and ARGV[13] ~= 'set' and st[1] and st[3] ~= q then
  if st[1] == ARGV[13] and st[2] == ARGV[14] and st[3] == ARGV[15] then
    st = {ARGV[16], ARGV[17], q}
    redis.call('HSET', key, 's', st[1], 'f', st[2], 'q', q)
    carried = true
  else
    return {2, st[1], st[2], st[3]}
  end
end
if st[1] and st[3] ~= q then
  if tonumber(st[1]) >= now_s then
    return {2, st[1], st[2], st[3]}
  end
  st = {false}  -- idle under its old quota: a full bucket, as if never seen
end

-- How far the TAT is ahead of now (0: a full bucket).
local debt = 0
if st[1] then
  debt = (tonumber(st[1]) - now_s) * U + (tonumber(st[2]) - now_f)
  if debt < 0 then debt = 0 end
end
-- Held at the end of time: the debt never clears.
local held = debt >= room
if held then debt = room end

local function remaining(d)
  if interval == 0 or d >= cap or d >= room then return 0 end
  return fdiv(cap - d, interval)
end

local function reset_of(d)
  return now_s + cdiv(now_f + d, U)
end

local function expire(d)
  redis.call('PEXPIRE', key, cdiv(d * 1000, U) + grace)
end

local function refuse(retry)
  if carried then expire(debt) end
  return {0, remaining(debt), reset_of(debt), retry, debt}
end

if cost > limit or (held and cost > 0) then
  return refuse(period_secs)
end
local new = debt + math.min(cost * interval, need_max)
if new > cap then
  local retry = cdiv(new - cap, U)
  if retry < 1 then retry = 1 end
  return refuse(retry)
end
if new > room then new = room end
if cost > 0 then
  local total = now_f + new
  local s = now_s + fdiv(total, U)
  redis.call('HSET', key, 's', int(s), 'f', int(total - (s - now_s) * U), 'q', q)
  expire(new)
elseif carried then
  expire(debt)
end
return {1, remaining(new), reset_of(new), 0, new}
