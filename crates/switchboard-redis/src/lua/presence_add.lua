-- Add or refresh presence entries of one channel.
-- KEYS[1] entries hash, KEYS[2] expiries sorted set
-- ARGV[1] ttl ms, then pairs: client, entry JSON
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local expiry = ms + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], expiry, ARGV[i])
end
-- The keys outlive their last entry by a ttl at most.
redis.call('pexpire', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('pexpire', KEYS[2], 2 * tonumber(ARGV[1]))
return 1
