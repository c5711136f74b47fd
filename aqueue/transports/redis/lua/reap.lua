-- KEYS: seen (zset: worker id -> last beat, server time), then the entry of each worker id
--   in ARGV (all in the hash tag {workers}: the entries are named, never built, here)
-- ARGV: lost_after seconds, then the worker ids LAPSED found
-- -> {id, leases, id, leases, ...}: the workers marked lost now, each with the leases it
--    listed at its last beat; the caller hands those back (fenced by their tokens).
-- Marking is atomic, so each lapsed worker is reaped by exactly one caller; a worker that
-- beat again since LAPSED listed it is left alone. An id whose entry expired (silent for
-- longer than it is kept) is dropped from the set.
local seen = KEYS[1]
local cutoff = now() - tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local id, entry = ARGV[i], KEYS[i]
  local beat = redis.call('ZSCORE', seen, id)
  if beat and tonumber(beat) <= cutoff then
    local lost = redis.call('HGET', entry, 'lost')
    if not lost then
      redis.call('ZREM', seen, id)
    elseif lost == '0' then
      redis.call('HSET', entry, 'lost', '1')
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', entry, 'leases') or '[]'
    end
  end
end
return out
