-- Put an unacked message back on its list (the end consumers pop next) and forget it, if its
-- unacked entry is still ARGV[2] (nobody acked or restored it meanwhile).
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] the list.
-- ARGV[1] delivery tag, ARGV[2] the entry as read, ARGV[3] the payload to push.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
