-- KEYS: entries, paused, version; ARGV: name, paused ('1'/'0') -> 0 if no such entry
local entries, paused, version = unpack(KEYS)
if redis.call('HEXISTS', entries, ARGV[1]) == 0 then return 0 end
local changed
if ARGV[2] == '1' then
  changed = redis.call('SADD', paused, ARGV[1])
else
  changed = redis.call('SREM', paused, ARGV[1])
end
if changed == 1 then redis.call('INCR', version) end
return 1
