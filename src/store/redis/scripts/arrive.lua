local ep = redis.call('HGET', KEYS[1], 'epoch')
if ep == ARGV[1] then
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[2])
    -- Numbers this store never handed out: the leader skips them for free.
    redis.call('RPUSH', KEYS[15], (n + 1) .. '-' .. ARGV[2])
    redis.call('LTRIM', KEYS[15], -100, -1)
  end
end
return {redis.call('INCRBY', KEYS[2], ARGV[3]), ep or '0'}
