-- KEYS: lease; ARGV: holder, milliseconds -> 1 if the holder holds the lease now, else 0
-- Takes a free (or expired: Redis deleted it) lease, renews the holder's own.
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
