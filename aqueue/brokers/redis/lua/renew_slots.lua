-- KEYS: slots key; ARGV: lease_seconds, holders... -> number renewed
local lease = tonumber(ARGV[1])
local deadline = fmt(now() + lease)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
local ttl = math.ceil(lease * 1000)
if n > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return n
