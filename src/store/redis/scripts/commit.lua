if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return -1 end
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[6], ARGV[i])
  else redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]) end
end
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[1], 'opened', ARGV[4]) end
if ARGV[5] ~= '' then
  local cur = cjson.decode(redis.call('HGET', KEYS[1], 'settings'))
  for k, v in pairs(cjson.decode(ARGV[5])) do cur[k] = v end
  redis.call('HSET', KEYS[1], 'settings', cjson.encode(cur))
end
redis.call('SET', KEYS[4], ARGV[3])
return 1
