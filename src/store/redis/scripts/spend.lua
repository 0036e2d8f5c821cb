redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', string.format('%d', now))
return redis.call('ZADD', KEYS[13], 'NX', ARGV[2], ARGV[1])
