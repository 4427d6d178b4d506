-- Live node announcements; a node that stopped announcing (died) is dropped.
-- KEYS as nodes_announce. Returns JSONs.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ms)
for _, name in ipairs(expired) do
  redis.call('hdel', KEYS[1], name)
end
redis.call('zremrangebyscore', KEYS[2], '-inf', ms)
local live = redis.call('zrange', KEYS[2], 0, -1)
if #live == 0 then
  return {}
end
local infos = redis.call('hmget', KEYS[1], unpack(live))
local out = {}
for _, e in ipairs(infos) do
  if e then out[#out + 1] = e end
end
return out
