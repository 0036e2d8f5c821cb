if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[9], ARGV[4]) end
local ep = redis.call('HGET', KEYS[1], 'epoch') or ''
if ep == ARGV[5] then
  -- Numbers this replica saw handed out are never handed out again, even
  -- if Redis lost its last writes.
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n < tonumber(ARGV[6]) then
    redis.call('SET', KEYS[2], ARGV[6])
    -- Numbers this store never handed out: the leader skips them for free.
    redis.call('RPUSH', KEYS[15], (n + 1) .. '-' .. ARGV[6])
    redis.call('LTRIM', KEYS[15], -100, -1)
  end
end
-- Sessions the checkout ended lately: every replica forgets its copy.
redis.call('ZREMRANGEBYSCORE', KEYS[14], '-inf', now - 5000)
local finished = redis.call('ZRANGE', KEYS[14], 0, -1)
local holder = redis.call('GET', KEYS[3])
local role = 1
if not holder and ARGV[7] == '0' then
  return {0, now, ep, redis.call('GET', KEYS[4]) or '', finished}
elseif not holder then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  role = 2
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
else
  return {0, now, ep, redis.call('GET', KEYS[4]) or '', finished}
end
local seen = redis.call('LRANGE', KEYS[7], 0, -1)
local claims = redis.call('LRANGE', KEYS[8], 0, -1)
local rejoins = redis.call('LRANGE', KEYS[9], 0, -1)
redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
local ended = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now)
for _, s in ipairs(ended) do redis.call('HDEL', KEYS[11], s, 'k' .. s) end
redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now)
local m = redis.call('HMGET', KEYS[1], 'settings', 'seed', 'opened')
return {role, now, ep, redis.call('GET', KEYS[4]) or '', m[1] or '', m[2] or '', m[3] or '',
  tonumber(redis.call('GET', KEYS[2]) or '0'), seen, claims, rejoins,
  redis.call('ZCARD', KEYS[10]), redis.call('PTTL', KEYS[12]), finished,
  redis.call('LRANGE', KEYS[15], 0, -1)}
