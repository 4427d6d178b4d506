-- The live members of a member -> expiry sorted set (expired ones dropped).
-- KEYS[1] the set. Returns the members.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', ms)
return redis.call('zrange', KEYS[1], 0, -1)
