-- A client joins a channel: its presence entry and the join push in one
-- step, so every node that sees the push finds the entry.
-- KEYS[1] entries hash, KEYS[2] expiries sorted set
-- ARGV[1] ttl ms, ARGV[2] client, ARGV[3] entry JSON,
-- ARGV[4] pub/sub channel, ARGV[5] 'publish' or 'spublish', ARGV[6] envelope
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
redis.call('zadd', KEYS[2], ms + tonumber(ARGV[1]), ARGV[2])
redis.call('pexpire', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('pexpire', KEYS[2], 2 * tonumber(ARGV[1]))
redis.call(ARGV[5], ARGV[4], ARGV[6])
return 1
