if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {-1, '', 0, now} end
local idle = redis.call('ZSCORE', KEYS[10], ARGV[2])
local s = redis.call('HGET', KEYS[11], ARGV[2])
if not idle or not s then return {-1, '', 0, now} end
local vid, max_end = string.match(s, '^(%S+) (%d+)$')
return {tonumber(idle), vid or '', tonumber(max_end or '0'), now}
