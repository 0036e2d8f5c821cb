if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {0, 0, '', now, 0} end
return {1, redis.call('GETBIT', KEYS[5], ARGV[2]), redis.call('HGET', KEYS[6], ARGV[2]) or '', now,
  tonumber(redis.call('HGET', KEYS[1], 'resumed') or '0')}
