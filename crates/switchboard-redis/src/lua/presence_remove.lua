-- Remove presence entries of one channel. KEYS as presence_add; ARGV clients.
for i = 1, #ARGV do
  redis.call('hdel', KEYS[1], ARGV[i])
  redis.call('zrem', KEYS[2], ARGV[i])
end
return 1
