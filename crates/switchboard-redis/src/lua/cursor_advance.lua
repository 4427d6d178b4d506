-- Advances a device's inbox cursor (PROTOCOL §10), atomically on the
-- channel's slot. KEYS[1] the channel's cursors hash (device ->
-- "offset:expires_ms:advanced_ms:epoch", server time).
-- ARGV: device, epoch, offset, ttl ms, max devices.
-- Same epoch: only forward. Another epoch (or none): replaced. A new device
-- past max devices forgets the least recently advanced ones; expired
-- entries are dropped. Returns {offset, epoch} as the cursor stands after.
local t = redis.call('time')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dev, epoch = ARGV[1], ARGV[2]
local offset, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local all = redis.call('hgetall', KEYS[1])
local cur_epoch, cur_off = nil, nil
local others = {}
for i = 1, #all, 2 do
  local d, v = all[i], all[i + 1]
  local o, e, a, ep = string.match(v, '^(%d+):(%d+):(%d+):(.*)$')
  if o == nil or tonumber(e) <= now then
    redis.call('hdel', KEYS[1], d)
  elseif d == dev then
    cur_epoch, cur_off = ep, tonumber(o)
  else
    table.insert(others, { d, tonumber(a) })
  end
end
if cur_epoch == epoch and cur_off >= offset then
  offset = cur_off
end
if cur_epoch == nil then
  table.sort(others, function(x, y) return x[2] < y[2] end)
  local over = #others + 1 - math.max(max, 1)
  for i = 1, over do
    redis.call('hdel', KEYS[1], others[i][1])
  end
end
redis.call('hset', KEYS[1], dev,
  string.format('%d:%d:%d:', offset, now + ttl, now) .. epoch)
-- Every entry expires within ttl of now: the hash with them.
redis.call('pexpire', KEYS[1], ttl)
return { string.format('%d', offset), epoch }
