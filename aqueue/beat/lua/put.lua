-- KEYS: entries, code, since, version; ARGV: name, spec, since (us), replace ('1'/'0')
-- -> 'added', 'replaced', 'exists' (not replaced) or 'code' (a code entry: refused)
local entries, code, since, version = unpack(KEYS)
local name = ARGV[1]
if redis.call('SISMEMBER', code, name) == 1 then return 'code' end
local exists = redis.call('HEXISTS', entries, name) == 1
if exists and ARGV[4] ~= '1' then return 'exists' end
redis.call('HSET', entries, name, ARGV[2])
redis.call('HSETNX', since, name, ARGV[3])
redis.call('INCR', version)
if exists then return 'replaced' end
return 'added'
