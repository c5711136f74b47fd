-- KEYS: dead (QueueKeys.dead) -> how many dead letters it held; it is gone after
local n = redis.call('LLEN', KEYS[1])
if n > 0 then redis.call('DEL', KEYS[1]) end
return n
