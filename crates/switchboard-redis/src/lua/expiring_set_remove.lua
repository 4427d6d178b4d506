-- Remove members of a member -> expiry sorted set and drop the expired ones.
-- KEYS[1] the set; ARGV members. Returns the live count left.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
for i = 1, #ARGV do
  redis.call('zrem', KEYS[1], ARGV[i])
end
redis.call('zremrangebyscore', KEYS[1], '-inf', ms)
return redis.call('zcard', KEYS[1])
