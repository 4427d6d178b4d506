-- A node announces itself until ttl; expired nodes are dropped.
-- KEYS[1] info hash, KEYS[2] expiries; ARGV[1] ttl ms, ARGV[2] name, ARGV[3] JSON
local now = redis.call('time')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
redis.call('zadd', KEYS[2], ms + tonumber(ARGV[1]), ARGV[2])
return 1
