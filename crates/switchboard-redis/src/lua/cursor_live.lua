-- The live cursors of a channel: {device, "offset:expires:advanced:epoch", ...}
-- (expiry against server time). KEYS[1] the channel's cursors hash.
local t = redis.call('time')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local all = redis.call('hgetall', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local e = string.match(all[i + 1], '^%d+:(%d+):')
  if e ~= nil and tonumber(e) > now then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
