redis.call('SET', KEYS[12], '1', 'PX', ARGV[1])
return 1
