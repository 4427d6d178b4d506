-- The live presence entries of one channel, dropping the expired ones
-- (their node stopped refreshing them: it died).
-- KEYS as presence_add. Returns entry JSONs.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ms)
for _, client in ipairs(expired) do
  redis.call('hdel', KEYS[1], client)
end
redis.call('zremrangebyscore', KEYS[2], '-inf', ms)
local live = redis.call('zrange', KEYS[2], 0, -1)
if #live == 0 then
  return {}
end
local entries = redis.call('hmget', KEYS[1], unpack(live))
local out = {}
for _, e in ipairs(entries) do
  if e then out[#out + 1] = e end
end
return out
