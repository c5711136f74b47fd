-- KEYS: chord members set, chord fired flag; ARGV: member_id, size, failed ('1'/'0'),
-- ttl_ms (-1: none) -> 1 for exactly one call per chord (the one that fires it), else 0
local members, fired = unpack(KEYS)
local ttl = tonumber(ARGV[4])
redis.call('SADD', members, ARGV[1])
if ttl >= 0 then redis.call('PEXPIRE', members, ttl) end
if redis.call('EXISTS', fired) == 1 then return 0 end
if ARGV[3] ~= '1' and redis.call('SCARD', members) < tonumber(ARGV[2]) then return 0 end
if ttl >= 0 then
  redis.call('SET', fired, '1', 'PX', ttl)
else
  redis.call('SET', fired, '1')
end
return 1
