-- KEYS: for each queue, earlier queue first, its KEYS_PER_QUEUE keys: ready, delayed,
--   inflight, body, score, count, epoch, notify (QueueKeys.claim)
-- ARGV: limit, lease_seconds, move_batch, record key head, record key tail
-- -> {wake_ms, n, then n times: queue_index, id, body, delivery_count, token, record}
--    (ClaimReply and Claimed in scripts.py)
--    wake_ms: when nothing was claimed, ms until the next delayed message is due or the next
--    lease expires (-1: none); 0 otherwise.
--    record: when a result backend on the same server was bound (head not empty), the
--    stored result record of the task (field RECORD_FIELD of head .. id .. tail; nil if
--    none), so the worker learns of revocations and finished duplicates without another
--    round trip. Those keys are built here, outside the queue's hash tag (a cluster needs a
--    call per slot, as for the result backend's own batched scripts).
local limit = tonumber(ARGV[1])
local batch = tonumber(ARGV[3])
local t = now()
local deadline = fmt(t + tonumber(ARGV[2]))
local nq = #KEYS / KEYS_PER_QUEUE
local out = {0, 0}
local got = 0
local head, tail = ARGV[4] or '', ARGV[5] or ''

-- the keys of the q-th queue (0-based), in QueueKeys.claim order
local function keys_of(q)
  return unpack(KEYS, q * KEYS_PER_QUEUE + 1, (q + 1) * KEYS_PER_QUEUE)
end

local function promote(src, ready, score)
  -- due delayed messages and expired leases go back to ready at their original score
  local ids = redis.call('ZRANGEBYSCORE', src, '-inf', fmt(t), 'LIMIT', 0, batch)
  if #ids == 0 then return end
  local scores = redis.call('HMGET', score, unpack(ids))
  local args = {}
  for i, id in ipairs(ids) do
    args[#args + 1] = scores[i] or '0'
    args[#args + 1] = id
  end
  redis.call('ZADD', ready, unpack(args))
  redis.call('ZREM', src, unpack(ids))
end

for q = 0, nq - 1 do
  local ready, delayed, inflight, body, score, count, epoch = keys_of(q)
  promote(delayed, ready, score)
  promote(inflight, ready, score)
  if got < limit then
    local popped = redis.call('ZPOPMIN', ready, limit - got)
    if #popped > 0 then
      local ids = column(popped, 2, 1)
      local bodies = redis.call('HMGET', body, unpack(ids))
      local counts = redis.call('HMGET', count, unpack(ids))
      local epochs = redis.call('HMGET', epoch, unpack(ids))
      local new_counts, new_epochs, leases = {}, {}, {}
      for i, id in ipairs(ids) do
        local b = bodies[i]
        -- an id without a body was purged concurrently: popping it was the cleanup
        if b then
          local c = (tonumber(counts[i]) or 0) + 1
          local e = (tonumber(epochs[i]) or 0) + 1
          new_counts[#new_counts + 1] = id
          new_counts[#new_counts + 1] = c
          new_epochs[#new_epochs + 1] = id
          new_epochs[#new_epochs + 1] = e
          leases[#leases + 1] = deadline
          leases[#leases + 1] = id
          out[#out + 1] = q
          out[#out + 1] = id
          out[#out + 1] = b
          out[#out + 1] = c
          out[#out + 1] = e
          if head ~= '' then
            out[#out + 1] = redis.call('HGET', head .. id .. tail, RECORD_FIELD)
          else
            out[#out + 1] = false
          end
          got = got + 1
        end
      end
      if #leases > 0 then
        redis.call('HSET', count, unpack(new_counts))
        redis.call('HSET', epoch, unpack(new_epochs))
        redis.call('ZADD', inflight, unpack(leases))
      end
    end
  end
end
out[2] = got

if got == limit then
  -- work may remain: pass the wake-up on to the next idle claimer
  for q = 0, nq - 1 do
    local ready, _, _, _, _, _, _, notify = keys_of(q)
    if redis.call('ZCARD', ready) > 0 then wake(notify) end
  end
elseif got == 0 then
  local next_at = nil
  for q = 0, nq - 1 do
    local _, delayed, inflight = keys_of(q)
    for _, z in ipairs({delayed, inflight}) do
      local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      if #first > 0 then
        local at = tonumber(first[2])
        if next_at == nil or at < next_at then next_at = at end
      end
    end
  end
  if next_at == nil then
    out[1] = -1
  else
    out[1] = math.max(0, math.ceil((next_at - t) * 1000))
  end
end
return out
