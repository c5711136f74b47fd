-- KEYS: dead, ready, body, score, notify, seq, dedupe (QueueKeys.replay)
-- ARGV: the dead letter's stored entry (as LRANGE returned it), id, body, priority
-- -> 1: the entry was removed and the message enqueued as new (delivery count 0, the id's
--    dedupe marker dropped); 0: nothing changed (the entry is gone, or the id is queued)
local dead, ready, body, score, notify, seq, dedupe = unpack(KEYS)
local id = ARGV[2]
if redis.call('HEXISTS', body, id) == 1 then return 0 end
if redis.call('LREM', dead, 1, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', dedupe, id)
local s = string.format('%d', redis.call('INCR', seq) - tonumber(ARGV[4]) * PRIORITY_WEIGHT)
redis.call('HSET', body, id, ARGV[3])
redis.call('HSET', score, id, s)
redis.call('ZADD', ready, s, id)
wake(notify)
return 1
