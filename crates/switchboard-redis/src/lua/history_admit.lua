-- Counts a channel as keeping history in its namespace, unless the namespace
-- already has as many as it may (`history_max_channels`), across every node.
-- A channel counts until its stream would have expired (ttl after it was
-- last admitted), so channels whose stream expired stop counting by
-- themselves; the set never holds more than the cap.
-- KEYS[1] the namespace's set (channel -> expiry ms, server time)
-- ARGV[1] channel, ARGV[2] history ttl ms, ARGV[3] cap (0: none)
-- Returns 1 when counted, 0 when refused.
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local ttl = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', ms)
local cap = tonumber(ARGV[3])
if cap > 0 and not redis.call('zscore', KEYS[1], ARGV[1])
    and redis.call('zcard', KEYS[1]) >= cap then
  return 0
end
redis.call('zadd', KEYS[1], 'GT', ms + ttl, ARGV[1])
if redis.call('pttl', KEYS[1]) < ttl then
  redis.call('pexpire', KEYS[1], ttl)
end
return 1
