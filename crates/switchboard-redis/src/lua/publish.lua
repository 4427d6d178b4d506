-- Publish one publication of a channel: next offset, stored in the stream,
-- sent to every node. One script, so offset order = stream order = send order.
-- KEYS[1] stream, KEYS[2] meta
-- ARGV[1] history size (0: keep none), ARGV[2] history ttl ms (0: keep none),
-- ARGV[3] meta ttl ms, ARGV[4] a fresh epoch in case the channel has none,
-- ARGV[5] sender ('' with ARGV[6] = '0' when none), ARGV[7] data (JSON text),
-- ARGV[8] pub/sub channel, ARGV[9] 'publish' or 'spublish'
-- With an idempotency key: KEYS[3] the key's name (same hash tag), ARGV[10]
-- its window in ms. A key seen within its window answers the first
-- publication's offset and epoch, and nothing is published; otherwise it is
-- claimed here, with the offset, so concurrent duplicates publish once.
if KEYS[3] then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local space = string.find(seen, ' ', 1, true)
    return {tonumber(string.sub(seen, 1, space - 1)), string.sub(seen, space + 1)}
  end
end
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  -- The meta is gone, so the offsets it counted are: a new epoch, and any
  -- stream left from the old one goes with it.
  epoch = ARGV[4]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 'o', 1)
redis.call('pexpire', KEYS[2], ARGV[3])
local from = '-'
if ARGV[6] == '1' then
  from = string.len(ARGV[5]) .. ' ' .. ARGV[5]
end
if size > 0 and ttl > 0 then
  local now = redis.call('time')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('xadd', KEYS[1], 'MAXLEN', '=', size, '0-' .. offset,
    'd', ARGV[7], 'f', from, 't', ms)
  redis.call('pexpire', KEYS[1], ttl)
else
  redis.call('del', KEYS[1])
end
redis.call(ARGV[9], ARGV[8], 'p' .. offset .. ' ' .. epoch .. ' ' .. from .. ' ' .. ARGV[7])
if KEYS[3] then
  redis.call('set', KEYS[3], offset .. ' ' .. epoch, 'PX', ARGV[10])
end
return {offset, epoch}
