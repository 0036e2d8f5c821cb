if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[9], ARGV[3]) end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1
