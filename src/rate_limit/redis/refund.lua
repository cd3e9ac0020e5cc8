-- Give back the cells of a request whose inner service failed: the same as `Gcra::refund`
-- (each TAT moves back by cost * T, never before now; a TAT held at the end of time stays).
--
-- KEYS[1]  the state: gcra.lua's hash {s, f, q} when ARGV[1] is 'one', gcra_many.lua's
--          {q, n, s1, f1, ...} when it is 'many'.
-- ARGV     'one' or 'many', the q the request was decided under, then 5 numbers per policy:
--          units per second U, cost * T (units), now (s), now (units), room (units to the end
--          of time). Nothing is written if the state was since written under another q.
local key = KEYS[1]
local many = ARGV[1] == 'many'
local q = ARGV[2]
local h = redis.call('HGETALL', key)
local t = {}
for i = 1, #h, 2 do t[h[i]] = h[i + 1] end
if t.q ~= q then return 0 end
local n = many and (tonumber(t.n) or 0) or 1
local args = {}
for i = 1, n do
  local o = 2 + (i - 1) * 5
  local U, back = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local now_s, now_f, room = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  if not U then return 0 end
  local sf, ff = 's', 'f'
  if many then sf, ff = 's' .. i, 'f' .. i end
  local debt = (tonumber(t[sf]) - now_s) * U + (tonumber(t[ff]) - now_f)
  if debt > 0 and debt < room then
    local new = debt - back
    if new < 0 then new = 0 end
    local total = now_f + new
    local s = now_s + math.floor(total / U)
    args[#args + 1] = sf
    args[#args + 1] = string.format('%.0f', s)
    args[#args + 1] = ff
    args[#args + 1] = string.format('%.0f', total - (s - now_s) * U)
  end
end
if #args > 0 then redis.call('HSET', key, unpack(args)) end
return 1
