-- Read a channel's position and stored publications, trimming what the
-- retention no longer keeps first.
-- KEYS[1] stream, KEYS[2] meta
-- ARGV[1] history size, ARGV[2] history ttl ms, ARGV[3] meta ttl ms,
-- ARGV[4] a fresh epoch in case the channel has none,
-- ARGV[5] since offset ('' for the latest), ARGV[6] limit ('' for all)
-- Returns {offset, epoch, id1, data1, from1, id2, ...}, oldest first.
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  -- Readers learn the epoch the next publication will carry.
  epoch = ARGV[4]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('pexpire', KEYS[2], ARGV[3])
end
local offset = tonumber(redis.call('hget', KEYS[2], 'o') or '0')
local out = {offset, epoch}
if size <= 0 or ttl <= 0 then
  return out
end
redis.call('xtrim', KEYS[1], 'MAXLEN', '=', size)
local now = redis.call('time')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - ttl
while true do
  local first = redis.call('xrange', KEYS[1], '-', '+', 'COUNT', 1)
  if #first == 0 then break end
  local fields = first[1][2]
  local t = 0
  for i = 1, #fields, 2 do
    if fields[i] == 't' then t = tonumber(fields[i + 1]) end
  end
  if t > cutoff then break end
  redis.call('xdel', KEYS[1], first[1][1])
end
local limit = ARGV[6]
if limit == '0' then
  return out
end
local entries
if ARGV[5] == '' then
  if limit == '' then
    entries = redis.call('xrange', KEYS[1], '-', '+')
  else
    entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', limit)
    local n = #entries
    for i = 1, math.floor(n / 2) do
      entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
    end
  end
else
  local start = '(0-' .. ARGV[5]
  if limit == '' then
    entries = redis.call('xrange', KEYS[1], start, '+')
  else
    entries = redis.call('xrange', KEYS[1], start, '+', 'COUNT', limit)
  end
end
for _, e in ipairs(entries) do
  local d, f = '', '-'
  local fields = e[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then d = fields[i + 1] elseif fields[i] == 'f' then f = fields[i + 1] end
  end
  out[#out + 1] = e[1]
  out[#out + 1] = d
  out[#out + 1] = f
end
return out
