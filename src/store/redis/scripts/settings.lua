if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {0, ''} end
local raw = redis.call('HGET', KEYS[1], 'settings')
if not raw then return {0, ''} end
if raw ~= ARGV[3] then return {2, raw} end
local cur = cjson.decode(raw)
local function held(s) return s.paused == true or s.closed == true or s.sold_out == true end
local was_held = held(cur)
for k, v in pairs(cjson.decode(ARGV[2])) do cur[k] = v end
local merged = cjson.encode(cur)
redis.call('HSET', KEYS[1], 'settings', merged)
if was_held and not held(cur) then
  redis.call('HSET', KEYS[1], 'resumed', string.format('%d', now))
end
return {1, merged}
