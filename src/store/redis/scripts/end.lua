if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if not redis.call('HGET', KEYS[11], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[10], ARGV[2])
redis.call('HDEL', KEYS[11], ARGV[2], 'k' .. ARGV[2])
redis.call('ZADD', KEYS[14], now, ARGV[2])
return 1
