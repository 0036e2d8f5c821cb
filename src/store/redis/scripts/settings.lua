if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {0, ''} end
local raw = redis.call('HGET', KEYS[1], 'settings')
if not raw then return {0, ''} end
if raw ~= ARGV[3] then return {2, raw} end
local cur = cjson.decode(raw)
local was_held = cur.paused == true or cur.closed == true
for k, v in pairs(cjson.decode(ARGV[2])) do cur[k] = v end
local merged = cjson.encode(cur)
redis.call('HSET', KEYS[1], 'settings', merged)
if was_held and not (cur.paused == true or cur.closed == true) then
  redis.call('HSET', KEYS[1], 'resumed', string.format('%d', now))
end
return {1, merged}
