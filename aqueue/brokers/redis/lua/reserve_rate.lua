-- KEYS: rate key; ARGV: limit, period -> seconds until the reserved slot (string)
-- GCRA: the key holds the theoretical arrival time of the next request
local t = now()
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = period / limit
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), t)
local slot = math.max(t, tat - (period - interval))
local new_tat = tat + interval
redis.call('SET', KEYS[1], fmt(new_tat), 'PX', math.ceil((new_tat - t + period) * 1000))
return fmt(slot - t)
