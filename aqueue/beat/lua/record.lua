-- KEYS: lease, entries, state; ARGV: holder, name, state bytes
-- -> 1 if stored: only the lease holder writes, and only for an entry that exists (a
-- removed entry's state is not brought back by a late write)
local lease, entries, state = unpack(KEYS)
if redis.call('GET', lease) ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', entries, ARGV[2]) == 0 then return 0 end
redis.call('HSET', state, ARGV[2], ARGV[3])
return 1
