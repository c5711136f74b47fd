-- KEYS: entries, code, since, state, paused, version
-- ARGV: since (us), then name, spec pairs: the code-defined entries, exactly
-- -> the names of the entries changed (added, replaced or removed)
local entries, code, since, state, paused, version = unpack(KEYS)
local wanted, changed = {}, {}
for i = 2, #ARGV, 2 do wanted[ARGV[i]] = ARGV[i + 1] end
for _, name in ipairs(redis.call('SMEMBERS', code)) do
  if wanted[name] == nil then
    redis.call('HDEL', entries, name)
    redis.call('HDEL', since, name)
    redis.call('HDEL', state, name)
    redis.call('SREM', paused, name)
    redis.call('SREM', code, name)
    changed[#changed + 1] = name
  end
end
for i = 2, #ARGV, 2 do
  local name, spec = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', entries, name) ~= spec or redis.call('SISMEMBER', code, name) == 0 then
    redis.call('HSET', entries, name, spec)
    redis.call('SADD', code, name)
    redis.call('HSETNX', since, name, ARGV[1])
    changed[#changed + 1] = name
  end
end
if #changed > 0 then redis.call('INCR', version) end
return changed
