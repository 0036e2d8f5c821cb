local gone = {}
for i = 2, #ARGV do
  local s = redis.call('HGET', KEYS[11], ARGV[i])
  if s then
    local max_end = tonumber(string.match(s, ' (%d+)$') or '0')
    local e = math.min(now + tonumber(ARGV[1]), max_end)
    redis.call('ZADD', KEYS[10], 'XX', 'GT', e, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
