-- KEYS: ready, inflight, epoch (QueueKeys.renew)
-- ARGV: lease_seconds, then fields (id, token)*
-- -> 1-based indexes of the leases that were lost
local ready, inflight, epoch = unpack(KEYS)
local deadline = fmt(now() + tonumber(ARGV[1]))
local f = split(ARGV[2], ARGV[3])
local ids = column(f, 2, 1)
local epochs = redis.call('HMGET', epoch, unpack(ids))
local held = redis.call('ZMSCORE', inflight, unpack(ids))
local leases, lost = {}, {}
for i, id in ipairs(ids) do
  local ok = epochs[i] == f[2 * i]
  -- expired and moved back to ready, but nobody claimed it since: take it back
  if ok and not held[i] then ok = redis.call('ZREM', ready, id) == 1 end
  if ok then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
  else
    lost[#lost + 1] = i
  end
end
if #leases > 0 then redis.call('ZADD', inflight, unpack(leases)) end
return lost
