if redis.call('HEXISTS', KEYS[1], 'epoch') == 0 then
  -- A new epoch: whatever an older life of this room left is void.
  redis.call('DEL', KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[14], KEYS[15])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'settings', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'seed', ARGV[3]) end
end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'settings', 'seed', 'opened')
return {m[1], m[2], m[3] or '', m[4] or '', redis.call('GET', KEYS[4]) or '', now}
