-- Several GCRA policies of one organization, atomically: the same decision as `decide_all` in
-- gcra.rs (each policy as `Gcra::decide`; admitted only if all admit, then all are spent).
--
-- KEYS[1]  the organization's state under several policies: a hash {q, n, s1, f1, ..., sn, fn}:
--          `q` the policies it was written under ("limit:period_ns,limit:period_ns,..."), `n`
--          their count, and each TAT as whole seconds `si` plus `fi` units of the second.
-- KEYS[2]  the organization's one-policy state (gcra.lua's {s, f, q}), read when KEYS[1] is
--          absent so that a plan change carries its cells over; deleted once carried.
-- ARGV     q, n, cost, TTL grace (ms), commit (1) or dry run (0), then 9 numbers per policy:
--          units per second U, limit N, interval T, capacity N*T (T and N*T in units),
--          retry-after of an inadmissible cost (s), now (s), now (units), room (units to the
--          end of time, capped at 2^52), need_max (what cost * T is held at);
--          then, only to carry a state over: the expected q, its count k, its 2k fields, and
--          the new 2n fields (s, f of each policy).
-- Returns  {allowed 0/1, then per policy: allowed 0/1, remaining, reset (Unix s), retry-after
--          (s), TAT - now (units)}, or {2, q, k, s1, f1, ..., sk, fk} when the state was
--          written under other policies and is not idle: the caller carries it over (as the
--          memory backend does) and calls again with the carry arguments.
--
-- Every quantity is an integer under 2^53 (as in gcra.lua), so the double arithmetic is exact.
local key, single = KEYS[1], KEYS[2]
local q = ARGV[1]
local n = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local commit = ARGV[5] == '1'
local P = 9
local pol = {}
for i = 1, n do
  local o = 5 + (i - 1) * P
  pol[i] = {
    U = tonumber(ARGV[o + 1]), limit = tonumber(ARGV[o + 2]), interval = tonumber(ARGV[o + 3]),
    cap = tonumber(ARGV[o + 4]), period_secs = tonumber(ARGV[o + 5]), now_s = tonumber(ARGV[o + 6]),
    now_f = tonumber(ARGV[o + 7]), room = tonumber(ARGV[o + 8]), need_max = tonumber(ARGV[o + 9]),
  }
end
local carry_at = 5 + n * P + 1

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

-- The stored state: {q, k, s = {...}, f = {...}}, where it came from, or nil.
local function load()
  local h = redis.call('HGETALL', key)
  if #h > 0 then
    local t = {}
    for i = 1, #h, 2 do t[h[i]] = h[i + 1] end
    local k = tonumber(t.n) or 0
    local st = {q = t.q, k = k, s = {}, f = {}}
    for i = 1, k do
      st.s[i] = t['s' .. i]
      st.f[i] = t['f' .. i]
    end
    return st, false
  end
  local o = redis.call('HMGET', single, 's', 'f', 'q')
  if o[1] then
    return {q = o[3], k = 1, s = {o[1]}, f = {o[2]}}, true
  end
  return nil, false
end

local st, from_single = load()
local cur_s, cur_f = {}, {}
local carried = false
if st and st.q ~= q then
  local ok = ARGV[carry_at] ~= nil and ARGV[carry_at] == st.q
    and tonumber(ARGV[carry_at + 1]) == st.k
  if ok then
    for i = 1, st.k do
      if ARGV[carry_at + 2 * i] ~= st.s[i] or ARGV[carry_at + 2 * i + 1] ~= st.f[i] then
        ok = false
      end
    end
  end
  if ok then
    local o = carry_at + 2 + 2 * st.k
    for i = 1, n do
      cur_s[i] = ARGV[o + 2 * (i - 1)]
      cur_f[i] = ARGV[o + 2 * (i - 1) + 1]
    end
    carried = true
  else
    local idle = true
    for i = 1, st.k do
      if tonumber(st.s[i]) >= pol[1].now_s then idle = false end
    end
    if not idle then
      local reply = {2, st.q, st.k}
      for i = 1, st.k do
        reply[#reply + 1] = st.s[i]
        reply[#reply + 1] = st.f[i]
      end
      return reply
    end
    -- Idle under its old policies: full buckets, as if never seen; a one-policy state left
    -- idle is removed (as the memory backend removes it), so it cannot shadow this one later.
    if from_single and commit then redis.call('DEL', single) end
  end
elseif st then
  for i = 1, n do
    cur_s[i] = st.s[i]
    cur_f[i] = st.f[i]
  end
end

local all = true
local res = {}
for i = 1, n do
  local p = pol[i]
  local debt = 0
  if cur_s[i] then
    debt = (tonumber(cur_s[i]) - p.now_s) * p.U + (tonumber(cur_f[i]) - p.now_f)
    if debt < 0 then debt = 0 end
  end
  local held = debt >= p.room
  if held then debt = p.room end
  local r = {debt = debt, p = p}
  if cost > p.limit or (held and cost > 0) then
    r.allowed, r.retry = false, p.period_secs
  else
    local new = debt + math.min(cost * p.interval, p.need_max)
    if new > p.cap then
      local retry = cdiv(new - p.cap, p.U)
      if retry < 1 then retry = 1 end
      r.allowed, r.retry = false, retry
    else
      if new > p.room then new = p.room end
      r.allowed, r.new = true, new
    end
  end
  if not r.allowed then all = false end
  res[i] = r
end

local function remaining(p, d)
  if p.interval == 0 or d >= p.cap or d >= p.room then return 0 end
  return fdiv(p.cap - d, p.interval)
end

local function reset_of(p, d)
  return p.now_s + cdiv(p.now_f + d, p.U)
end

-- Write the debts `d` (one per policy) as the state, with its expiry.
local function store(d)
  local args = {'q', q, 'n', n}
  local ttl = 0
  for i = 1, n do
    local p = pol[i]
    local total = p.now_f + d[i]
    local s = p.now_s + fdiv(total, p.U)
    args[#args + 1] = 's' .. i
    args[#args + 1] = int(s)
    args[#args + 1] = 'f' .. i
    args[#args + 1] = int(total - (s - p.now_s) * p.U)
    local t = cdiv(d[i] * 1000, p.U)
    if t > ttl then ttl = t end
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl + grace)
  if from_single then redis.call('DEL', single) end
end

local out = {all and 1 or 0}
local debts = {}
for i = 1, n do
  local r, p = res[i], res[i].p
  if all then
    debts[i] = r.new
    out[#out + 1] = 1
    out[#out + 1] = remaining(p, r.new)
    out[#out + 1] = reset_of(p, r.new)
    out[#out + 1] = 0
    out[#out + 1] = r.new
  else
    debts[i] = r.debt
    out[#out + 1] = r.allowed and 1 or 0
    out[#out + 1] = remaining(p, r.debt)
    out[#out + 1] = reset_of(p, r.debt)
    out[#out + 1] = r.allowed and 0 or r.retry
    out[#out + 1] = r.debt
  end
end
if commit and ((all and cost > 0) or carried) then
  store(debts)
end
return out
