if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {-1, now} end
if redis.call('GETBIT', KEYS[5], ARGV[2]) == 1 then
  -- A lost answer asked for again: only by the claimant who presented
  -- the same retry key, soon after. A copy of the queue token is not it.
  if ARGV[7] ~= '' then
    local s = redis.call('HGET', KEYS[11], ARGV[2])
    local k = redis.call('HGET', KEYS[11], 'k' .. ARGV[2])
    if s and k and string.sub(s, 1, #ARGV[3] + 1) == ARGV[3] .. ' ' then
      local key, at = string.match(k, '^(%S+) (%d+)$')
      if key == ARGV[7] and now - tonumber(at) < tonumber(ARGV[8]) then return {2, now} end
    end
  end
  return {-2, now}
end
local f = redis.call('HGET', KEYS[6], ARGV[2])
if not f or string.sub(f, 1, 2) ~= 'c:' then return {-3, now} end
local settings = cjson.decode(redis.call('HGET', KEYS[1], 'settings') or '{}')
if settings.closed == true or settings.sold_out == true then return {-5, now} end
if settings.paused == true then return {-4, now} end
local called = math.max(tonumber(string.sub(f, 3)), tonumber(redis.call('HGET', KEYS[1], 'resumed') or '0'))
if called + tonumber(ARGV[4]) <= now then return {-3, now} end
redis.call('SETBIT', KEYS[5], ARGV[2], 1)
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('ZADD', KEYS[10], now + tonumber(ARGV[5]), ARGV[2])
redis.call('HSET', KEYS[11], ARGV[2], ARGV[3] .. ' ' .. string.format('%d', now + tonumber(ARGV[6])))
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[11], 'k' .. ARGV[2], ARGV[7] .. ' ' .. string.format('%d', now))
end
redis.call('RPUSH', KEYS[8], ARGV[2])
return {1, now}
