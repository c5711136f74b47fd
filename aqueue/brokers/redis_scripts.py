"""The Lua scripts behind the Redis broker (see docs/brokers/redis.md for the key layout),
with the Python side of their data layouts (PUBLISH arguments, dead-letter entries).

Every script touches the keys of one queue only, all sharing the queue's hash tag, and takes
every key it touches in ``KEYS`` so it can run unchanged on Redis Cluster. The one
exception is ``CLAIM``, which accepts the key groups of several queues so a worker polling
``["hi", "default"]`` pays one round trip; on a cluster it would be called once per queue.

Cost model: the server spends about a microsecond per ``redis.call``, so the scripts work
on whole batches (``HMGET``/``HSET``/``ZADD``/``ZREM`` with many members) rather than one
call per message, and per-message calls are left to the rare paths (hand-back, dead
letter). Batches are capped by the callers at 1000 messages, well under Lua's limit of
about 8000 values for ``unpack``.

Time is the Redis server's (``TIME``), never the caller's: lease deadlines and due times are
compared on one clock however skewed the workers' clocks are. Producers pass an ETA as a
delay relative to their own clock, which the script anchors to server time.

Scores are formatted with ``%.17g`` / ``%d`` because Lua's default number-to-string
conversion keeps only 14 significant digits. Needs Redis >= 6.2 (``ZMSCORE``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from aqueue.brokers.redis_connection import Script, ScriptCall, pack_fields
from aqueue.core.protocols import DEAD_LETTER_BODY_LIMIT, DeadLetter, Outgoing

#: keys per queue passed to CLAIM, in this order
CLAIM_KEYS = ("ready", "delayed", "inflight", "body", "score", "count", "epoch", "notify")
#: keys passed to SETTLE, in this order
SETTLE_KEYS = (*CLAIM_KEYS, "dead")
#: every key of a queue, in the order RedisBroker keeps them
QUEUE_KEYS = (*SETTLE_KEYS, "seq", "dedupe")
#: priority weight in the ready score: score = seq - priority * 2^42. With priorities
#: clamped to +-1000 and a per-queue sequence below 2^42, scores stay exact doubles (< 2^53).
PRIORITY_WEIGHT = 2**42
MAX_PRIORITY = 1000
#: most messages one script call handles (claim limit, publish chunk, settle batch)
MAX_BATCH = 1000

_COMMON = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
-- Fields travel as two strings (big-endian u32 lengths, then the bytes joined), so a batch
-- costs the client two arguments, not thousands (see redis_connection.pack_fields).
local function split(lens, data)
  local out, pos = {}, 1
  for i = 1, #lens / 4 do
    local len = struct.unpack('>I4', lens, (i - 1) * 4 + 1)
    out[i] = string.sub(data, pos, pos + len - 1)
    pos = pos + len
  end
  return out
end
local function column(f, width, k)
  local out = {}
  for i = k, #f, width do out[#out + 1] = f[i] end
  return out
end
local function wake(notify)
  -- one pending token is enough: a woken claimer passes it on while work remains
  if redis.call('LPUSH', notify, '1') > 1 then redis.call('LTRIM', notify, 0, 0) end
end
"""

#: the Lua helpers (now, fmt, split, column, wake), for scripts defined elsewhere
LUA_HELPERS = _COMMON

# KEYS: ready, delayed, body, score, notify, seq, dedupe
# ARGV: dedupe_ttl_seconds (0: off), then fields (id, body, priority, delay_seconds)*
# -> per message 1 (stored) or 0 (id already queued, delayed, in flight or recently enqueued)
PUBLISH = Script(
    "publish",
    _COMMON
    + """
local ready, delayed, body, score, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7]
local ttl = tonumber(ARGV[1])
local f = split(ARGV[2], ARGV[3])
local n = #f / 4
local t = now()
local ids = column(f, 4, 1)
local queued = redis.call('HMGET', body, unpack(ids))
local known = {}
if ttl > 0 then
  -- the dedupe set remembers enqueued ids until their score (expiry) passes
  known = redis.call('ZMSCORE', dedupe, unpack(ids))
end
local top = redis.call('INCRBY', KEYS[6], n)
if ttl > 0 and top % 64 < n then
  -- expired markers are ignored below; removing them once per 64 messages is enough
  redis.call('ZREMRANGEBYSCORE', dedupe, '-inf', fmt(t))
end
local bodies, scores, due_now, due_later, marks, taken, out = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local j = (i - 1) * 4
  local id = f[j + 1]
  if queued[i] or (known[i] and tonumber(known[i]) > t) or taken[id] then
    out[i] = 0
  else
    taken[id] = true
    local s = string.format('%d', top - n + i - tonumber(f[j + 3]) * %(weight)d)
    local delay = tonumber(f[j + 4])
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = f[j + 2]
    scores[#scores + 1] = id
    scores[#scores + 1] = s
    if delay > 0 then
      due_later[#due_later + 1] = fmt(t + delay)
      due_later[#due_later + 1] = id
    else
      due_now[#due_now + 1] = s
      due_now[#due_now + 1] = id
    end
    if ttl > 0 then
      marks[#marks + 1] = fmt(t + ttl)
      marks[#marks + 1] = id
    end
    out[i] = 1
  end
end
if #bodies > 0 then
  redis.call('HSET', body, unpack(bodies))
  redis.call('HSET', score, unpack(scores))
  if #due_now > 0 then redis.call('ZADD', ready, unpack(due_now)) end
  if #due_later > 0 then redis.call('ZADD', delayed, unpack(due_later)) end
  if #marks > 0 then redis.call('ZADD', dedupe, unpack(marks)) end
  -- a delayed message wakes waiters too, so they shorten their wait to its due time
  wake(KEYS[5])
end
return out
""".replace("%(weight)d", str(PRIORITY_WEIGHT)),
)

#: messages per PUBLISH call; a bigger batch becomes several calls in one pipeline, so no
#: single script blocks the server for long
PUBLISH_CHUNK = 500


def eta_delay(eta: float | None) -> str:
    """An ETA as the scripts take it: a delay from now, which they anchor to server time.

    The delay is taken on the producer's clock, so a producer whose clock is off does not
    shift other queues.
    """
    if eta is None:
        return "0"
    return repr(max(0.0, eta - time.time()))


def publish_calls(
    messages: Sequence[Outgoing],
    queue_keys: Callable[[str], tuple[str, ...]],
    dedupe_ttl: float,
) -> tuple[list[ScriptCall], list[list[int]]]:
    """The PUBLISH calls for ``messages`` (per queue, in chunks), and the indexes of the
    messages each call carries. ``queue_keys(queue)`` gives the keys in QUEUE_KEYS order."""
    by_queue: dict[str, list[int]] = defaultdict(list)
    for index, message in enumerate(messages):
        by_queue[message.queue].append(index)
    ttl = repr(float(dedupe_ttl))
    calls: list[ScriptCall] = []
    spans: list[list[int]] = []
    for queue, indexes in by_queue.items():
        k = queue_keys(queue)
        keys = [k[0], k[1], k[3], k[4], k[7], k[9], k[10]]
        for start in range(0, len(indexes), PUBLISH_CHUNK):
            chunk = indexes[start : start + PUBLISH_CHUNK]
            fields: list[bytes | str] = []
            for i in chunk:
                m = messages[i]
                priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, int(m.priority)))
                fields += (m.id, m.body, str(priority), eta_delay(m.eta))
            calls.append((PUBLISH, keys, [ttl, *pack_fields(fields)]))
            spans.append(chunk)
    return calls, spans


# KEYS: CLAIM_KEYS for each queue, earlier queue first
# ARGV: limit, lease_seconds, move_batch, record key head, record key tail
# -> {wake_ms, n, then n times: queue_index, id, body, delivery_count, token, record}
#    wake_ms: when nothing was claimed, ms until the next delayed message is due or the next
#    lease expires (-1: none); 0 otherwise.
#    record: when a result backend on the same server was bound (head not empty), the
#    stored result record of the task (field 'r' of head .. id .. tail; nil if none), so
#    the worker learns of revocations and finished duplicates without another round trip.
#    Those keys are built here, outside the queue's hash tag (a cluster needs a call per
#    slot, as for the result backend's own batched scripts).
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
local head, tail = ARGV[4] or '', ARGV[5] or ''

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
            out[#out + 1] = redis.call('HGET', head .. id .. tail, 'r')
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
# ARGV: dead_letter_limit, then fields (op, id, token, a, b)*
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
local f = split(ARGV[2], ARGV[3])
local epochs = redis.call('HMGET', epoch, unpack(column(f, 5, 2)))
local out, gone, handled = {}, {}, {}
local t = nil
local woke = false
for i = 1, #f / 5 do
  local j = (i - 1) * 5
  local op, id, token, a, b = f[j + 1], f[j + 2], f[j + 3], f[j + 4], f[j + 5]
  -- a second operation on one id in a batch sees the first one's effect: it loses
  if epochs[i] == token and not handled[id] then
    handled[id] = true
    if op == 'A' then
      gone[#gone + 1] = id
    elseif op == 'D' then
      t = t or now()
      -- the body's first %(limit)d bytes and its size: a huge message must not stay huge
      -- (up to dead_letter_limit of them per queue)
      local payload = redis.call('HGET', body, id) or ''
      local size = #payload
      if size > %(limit)d then payload = string.sub(payload, 1, %(limit)d) end
      local entry = string.format('2\\n%s\\n%d\\n%d\\n%d\\n', fmt(t), #id, #a, size)
      redis.call('LPUSH', KEYS[9], entry .. id .. a .. payload)
      redis.call('LTRIM', KEYS[9], 0, cap - 1)
      gone[#gone + 1] = id
    else
      redis.call('ZREM', inflight, id)
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
          redis.call('ZREM', ready, id)
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
if #gone > 0 then
  redis.call('ZREM', inflight, unpack(gone))
  -- an expired lease may have been moved back to ready without being claimed again;
  -- its holder still owns it until someone else claims it
  redis.call('ZREM', ready, unpack(gone))
  for _, h in ipairs({body, score, count, epoch}) do redis.call('HDEL', h, unpack(gone)) end
end
if woke then wake(KEYS[8]) end
return out
""".replace("%(limit)d", str(DEAD_LETTER_BODY_LIMIT)),
)

# KEYS: ready, inflight, epoch
# ARGV: lease_seconds, then fields (id, token)*
# -> 1-based indexes of the leases that were lost
RENEW = Script(
    "renew",
    _COMMON
    + """
local deadline = fmt(now() + tonumber(ARGV[1]))
local f = split(ARGV[2], ARGV[3])
local ids = column(f, 2, 1)
local epochs = redis.call('HMGET', KEYS[3], unpack(ids))
local held = redis.call('ZMSCORE', KEYS[2], unpack(ids))
local leases, lost = {}, {}
for i, id in ipairs(ids) do
  local ok = epochs[i] == f[2 * i]
  -- expired and moved back to ready, but nobody claimed it since: take it back
  if ok and not held[i] then ok = redis.call('ZREM', KEYS[1], id) == 1 end
  if ok then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
  else
    lost[#lost + 1] = i
  end
end
if #leases > 0 then redis.call('ZADD', KEYS[2], unpack(leases)) end
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

# KEYS: ready, delayed, body, score, count, epoch, dedupe
# ARGV: batch -> number removed (at most batch from each of ready and delayed); their ids
# leave the dedupe set too, so they may be published again
PURGE = Script(
    "purge",
    """
local removed = 0
for _, z in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('ZRANGE', z, 0, tonumber(ARGV[1]) - 1)
  if #ids > 0 then
    redis.call('ZREM', z, unpack(ids))
    for k = 3, 7 do
      if k == 7 then redis.call('ZREM', KEYS[k], unpack(ids))
      else redis.call('HDEL', KEYS[k], unpack(ids)) end
    end
    removed = removed + #ids
  end
end
return removed
""",
)


def parse_dead_letter(queue: str, raw: bytes) -> DeadLetter:
    """A dead-letter list entry as SETTLE writes it:
    ``"2\\n<at>\\n<len(id)>\\n<len(reason)>\\n<size>\\n" + id + reason + body[:limit]``.

    Entries written before bodies were cut (``"<at>\\n<len(id)>\\n<len(reason)>\\n" + id +
    reason + body``, whole) are read too: their first line is a time, never ``2``.
    """
    if raw.startswith(b"2\n"):
        _, at, id_len, reason_len, size, rest = raw.split(b"\n", 5)
    else:
        at, id_len, reason_len, rest = raw.split(b"\n", 3)
        size = b"-1"
    i, r = int(id_len), int(reason_len)
    return DeadLetter(
        id=rest[:i].decode(),
        queue=queue,
        reason=rest[i : i + r].decode(),
        body=rest[i + r :],
        at=float(at),
        size=int(size),
    )
