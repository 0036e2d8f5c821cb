if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  -- A decider gone for long must not let the list grow without bound.
  redis.call('LTRIM', KEYS[1], -1000, -1)
  redis.call('PEXPIRE', KEYS[1], 600000)
end
local deltas = {}
if ARGV[2] == '1' then
  deltas = redis.call('LRANGE', KEYS[1], 0, -1)
  redis.call('DEL', KEYS[1])
end
return {deltas, redis.call('GET', KEYS[2]) or ''}
