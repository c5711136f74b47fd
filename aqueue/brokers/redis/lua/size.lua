-- KEYS: ready, delayed, inflight (QueueKeys.size) -> number of messages
local ready, delayed, inflight = unpack(KEYS)
return redis.call('ZCARD', ready) + redis.call('ZCARD', delayed) + redis.call('ZCARD', inflight)
