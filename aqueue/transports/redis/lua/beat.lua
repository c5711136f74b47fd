-- KEYS: seen (zset: worker id -> last beat, server time), entry (the worker's hash)
-- ARGV: worker id, info (JSON), leases (JSON [[queue, id, token], ...]), held, keep seconds
-- A beat makes a lost entry live again: the worker was only late (frozen, cut off); the
-- leases it had were handed back and its renewals will say so.
local seen, entry = KEYS[1], KEYS[2]
redis.call('ZADD', seen, fmt(now()), ARGV[1])
redis.call('HSET', entry, 'info', ARGV[2], 'leases', ARGV[3], 'held', ARGV[4], 'lost', '0')
redis.call('EXPIRE', entry, ARGV[5])
return 1
