-- KEYS: seen (zset: worker id -> last beat, server time); ARGV: lost_after seconds, limit
-- -> the ids whose last beat is older than lost_after (REAP checks each again)
local cutoff = fmt(now() - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
