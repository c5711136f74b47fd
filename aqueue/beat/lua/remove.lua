-- KEYS: entries, code, since, state, paused, version; ARGV: name
-- -> 'removed', 'missing' or 'code' (a code entry: refused)
local entries, code, since, state, paused, version = unpack(KEYS)
local name = ARGV[1]
if redis.call('SISMEMBER', code, name) == 1 then return 'code' end
if redis.call('HDEL', entries, name) == 0 then return 'missing' end
redis.call('HDEL', since, name)
redis.call('HDEL', state, name)
redis.call('SREM', paused, name)
redis.call('INCR', version)
return 'removed'
