-- A client leaves a channel: its entry goes and, if it was there, the leave
-- push is sent, in one step (a client removed twice leaves once).
-- KEYS as presence_join; ARGV[1] client, ARGV[2] pub/sub channel,
-- ARGV[3] 'publish' or 'spublish', ARGV[4] envelope
local removed = redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
if removed == 1 then
  redis.call(ARGV[3], ARGV[2], ARGV[4])
end
return removed
