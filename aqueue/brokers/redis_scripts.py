"""The Lua scripts behind the Redis broker (see docs/brokers/redis.md for the key layout).

Every script touches the keys of one queue only, all sharing the queue's hash tag, and takes
every key it touches in ``KEYS`` so it can run unchanged on Redis Cluster. The one
exception is ``CLAIM``, which accepts the key groups of several queues so a worker polling
``["hi", "default"]`` pays one round trip; on a cluster it is called once per queue.

Time is the Redis server's (``TIME``), never the caller's: lease deadlines and due times are
compared on one clock however skewed the workers' clocks are. Producers pass an ETA as a
delay relative to their own clock, which the script anchors to server time.

Scores are formatted with ``%.17g`` / ``%d`` because Lua's default number-to-string
conversion keeps only 14 significant digits.
"""

from __future__ import annotations

from aqueue.brokers.redis_connection import Script

#: keys per queue passed to CLAIM, in this order
CLAIM_KEYS = ("ready", "delayed", "inflight", "body", "score", "count", "epoch", "notify")
#: keys passed to SETTLE, in this order
SETTLE_KEYS = (*CLAIM_KEYS, "dead")
#: priority weight in the ready score: score = seq - priority * 2^42. With priorities
#: clamped to +-1000 and a per-queue sequence below 2^42, scores stay exact doubles (< 2^53).
PRIORITY_WEIGHT = 2**42
MAX_PRIORITY = 1000

_COMMON = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function wake(notify)
  -- one pending token is enough: a woken claimer passes it on while work remains
  redis.call('LPUSH', notify, '1')
  redis.call('LTRIM', notify, 0, 0)
end
"""

# KEYS: ready, delayed, body, score, notify, seq, dedupe_1 .. dedupe_n
# ARGV: dedupe_ttl_ms, then per message: id, body, priority, delay_seconds
# -> per message 1 (stored) or 0 (id already queued, delayed, in flight or recently enqueued)
PUBLISH = Script(
    "publish",
    _COMMON
    + """
local ttl = tonumber(ARGV[1])
local n = (#ARGV - 1) / 4
local top = redis.call('INCRBY', KEYS[6], n)
local t = nil
local out = {}
local added = 0
for i = 1, n do
  local j = 1 + (i - 1) * 4
  local id = ARGV[j + 1]
  local ok = redis.call('HEXISTS', KEYS[3], id) == 0
  if ok and ttl > 0 then
    ok = redis.call('SET', KEYS[6 + i], '1', 'NX', 'PX', ttl) ~= false
  end
  if ok then
    local score = string.format('%d', top - n + i - tonumber(ARGV[j + 3]) * %(weight)d)
    local delay = tonumber(ARGV[j + 4])
    redis.call('HSET', KEYS[3], id, ARGV[j + 2])
    redis.call('HSET', KEYS[4], id, score)
    if delay > 0 then
      t = t or now()
      redis.call('ZADD', KEYS[2], fmt(t + delay), id)
    else
      redis.call('ZADD', KEYS[1], score, id)
    end
    added = added + 1
    out[i] = 1
  else
    out[i] = 0
  end
end
-- a delayed message wakes waiters too, so they shorten their wait to its due time
if added > 0 then wake(KEYS[5]) end
return out
""".replace("%(weight)d", str(PRIORITY_WEIGHT)),
)

# KEYS: CLAIM_KEYS for each queue, earlier queue first
# ARGV: limit, lease_seconds, move_batch
# -> {wake_ms, n, then n times: queue_index, id, body, delivery_count, token}
#    wake_ms: when nothing was claimed, ms until the next delayed message is due or the next
#    lease expires (-1: none); 0 otherwise.
CLAIM = Script(
    "claim",
    _COMMON
    + """
local limit = tonumber(ARGV[1])
local batch = tonumber(ARGV[3])
local t = now()
local deadline = fmt(t + tonumber(ARGV[2]))
local nq = #KEYS / 8
local out = {0, 0}
local got = 0

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
  local k = q * 8
  local ready, delayed, inflight = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local body, score, count, epoch = KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  promote(delayed, ready, score)
  promote(inflight, ready, score)
  if got < limit then
    local popped = redis.call('ZPOPMIN', ready, limit - got)
    if #popped > 0 then
      local ids = {}
      for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
      local bodies = redis.call('HMGET', body, unpack(ids))
      local leases = {}
      for i, id in ipairs(ids) do
        local b = bodies[i]
        -- an id without a body was purged concurrently: popping it was the cleanup
        if b then
          local c = redis.call('HINCRBY', count, id, 1)
          local e = redis.call('HINCRBY', epoch, id, 1)
          leases[#leases + 1] = deadline
          leases[#leases + 1] = id
          out[#out + 1] = q
          out[#out + 1] = id
          out[#out + 1] = b
          out[#out + 1] = c
          out[#out + 1] = e
          got = got + 1
        end
      end
      if #leases > 0 then redis.call('ZADD', inflight, unpack(leases)) end
    end
  end
end
out[2] = got

if got == limit then
  -- work may remain: pass the wake-up on to the next idle claimer
  for q = 0, nq - 1 do
    if redis.call('ZCARD', KEYS[q * 8 + 1]) > 0 then wake(KEYS[q * 8 + 8]) end
  end
elseif got == 0 then
  local next_at = nil
  for q = 0, nq - 1 do
    for _, z in ipairs({KEYS[q * 8 + 2], KEYS[q * 8 + 3]}) do
      local head = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      if #head > 0 then
        local at = tonumber(head[2])
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
""",
)

# KEYS: SETTLE_KEYS
# ARGV: dead_letter_limit, then per operation: op, id, token, a, b
#   op 'A' ack | 'R' release (a = '1' if executed) | 'Q' requeue (a = body, b = delay)
#   | 'D' dead letter (a = reason)
# -> per operation 1 (done) or 0 (the token no longer holds the message)
SETTLE = Script(
    "settle",
    _COMMON
    + """
local ready, delayed, inflight = KEYS[1], KEYS[2], KEYS[3]
local body, score, count, epoch = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local cap = tonumber(ARGV[1])
local out = {}
local t = nil
local woke = false
for i = 1, (#ARGV - 1) / 5 do
  local j = 1 + (i - 1) * 5
  local op, id, token, a, b = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4], ARGV[j + 5]
  if redis.call('HGET', epoch, id) == token then
    redis.call('ZREM', inflight, id)
    -- an expired lease may have been moved back to ready without being claimed again;
    -- its holder still owns it until someone else claims it
    redis.call('ZREM', ready, id)
    if op == 'A' or op == 'D' then
      if op == 'D' then
        t = t or now()
        local payload = redis.call('HGET', body, id) or ''
        local entry = string.format('%s\\n%d\\n%d\\n', fmt(t), #id, #a) .. id .. a .. payload
        redis.call('LPUSH', KEYS[9], entry)
        redis.call('LTRIM', KEYS[9], 0, cap - 1)
      end
      redis.call('HDEL', body, id)
      redis.call('HDEL', score, id)
      redis.call('HDEL', count, id)
      redis.call('HDEL', epoch, id)
    else
      -- a new epoch: the handed-back lease's token is dead, so a late renew or ack by
      -- the old holder cannot grab or remove the message again
      redis.call('HINCRBY', epoch, id, 1)
      local s = redis.call('HGET', score, id) or '0'
      if op == 'R' then
        if a ~= '1' then redis.call('HINCRBY', count, id, -1) end
        redis.call('ZADD', ready, s, id)
      else
        redis.call('HSET', body, id, a)
        redis.call('HSET', count, id, 0)
        local delay = tonumber(b)
        if delay > 0 then
          t = t or now()
          redis.call('ZADD', delayed, fmt(t + delay), id)
        else
          redis.call('ZADD', ready, s, id)
        end
      end
      woke = true
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
if woke then wake(KEYS[8]) end
return out
""",
)

# KEYS: ready, inflight, epoch
# ARGV: lease_seconds, then per lease: id, token
# -> 1-based indexes of the leases that were lost
RENEW = Script(
    "renew",
    _COMMON
    + """
local deadline = fmt(now() + tonumber(ARGV[1]))
local lost = {}
for i = 1, (#ARGV - 1) / 2 do
  local id, token = ARGV[2 * i], ARGV[2 * i + 1]
  local held = redis.call('HGET', KEYS[3], id) == token
  if held then
    if redis.call('ZSCORE', KEYS[2], id) then
      redis.call('ZADD', KEYS[2], deadline, id)
    elseif redis.call('ZREM', KEYS[1], id) == 1 then
      -- expired and moved back to ready, but nobody claimed it since: take it back
      redis.call('ZADD', KEYS[2], deadline, id)
    else
      held = false
    end
  end
  if not held then lost[#lost + 1] = i end
end
return lost
""",
)

# KEYS: ready, delayed, inflight -> number of messages
SIZE = Script(
    "size",
    """
return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
""",
)

# KEYS: ready, delayed, body, score, count, epoch
# ARGV: batch -> ids removed (at most batch from each of ready and delayed)
PURGE = Script(
    "purge",
    """
local removed = {}
for _, z in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('ZRANGE', z, 0, tonumber(ARGV[1]) - 1)
  if #ids > 0 then
    redis.call('ZREM', z, unpack(ids))
    for k = 3, 6 do redis.call('HDEL', KEYS[k], unpack(ids)) end
    for _, id in ipairs(ids) do removed[#removed + 1] = id end
  end
end
return removed
""",
)

ALL = (PUBLISH, CLAIM, SETTLE, RENEW, SIZE, PURGE)
