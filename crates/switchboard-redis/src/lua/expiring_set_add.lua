-- Add or refresh members of a sorted set of member -> expiry (ms, server
-- time); an existing later expiry is kept (GT). Drops expired members.
-- KEYS[1] the set; ARGV[1] ttl ms, then members. Returns the live count.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local expiry = ms + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('zadd', KEYS[1], 'GT', expiry, ARGV[i])
end
redis.call('zremrangebyscore', KEYS[1], '-inf', ms)
redis.call('pexpire', KEYS[1], 2 * tonumber(ARGV[1]))
return redis.call('zcard', KEYS[1])
