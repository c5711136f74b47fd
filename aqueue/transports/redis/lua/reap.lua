-- KEYS: seen (zset: worker id -> last beat, server time)
-- ARGV: lost_after seconds, entry key prefix (entry = prefix .. worker id, same hash tag)
-- -> {id, leases, id, leases, ...}: the workers marked lost now, each with the leases it
--    listed at its last beat; the caller hands those back (fenced by their tokens).
-- Marking is atomic, so each lapsed worker is reaped by exactly one caller. An id whose
-- entry expired (silent for longer than it is kept) is dropped from the set.
local seen = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', seen, '-inf', fmt(now() - tonumber(ARGV[1])))
local out = {}
for _, id in ipairs(ids) do
  local entry = ARGV[2] .. id
  local lost = redis.call('HGET', entry, 'lost')
  if not lost then
    redis.call('ZREM', seen, id)
  elseif lost == '0' then
    redis.call('HSET', entry, 'lost', '1')
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', entry, 'leases') or '[]'
  end
end
return out
