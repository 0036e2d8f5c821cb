redis.call('DEL', KEYS[2], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[14], KEYS[15])
redis.call('HDEL', KEYS[1], 'opened', 'seed', 'resumed')
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'settings', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'seed', ARGV[3]) end
redis.call('SET', KEYS[4], ARGV[4])
return 1
