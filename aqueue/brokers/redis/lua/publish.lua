-- KEYS: ready, delayed, body, score, notify, seq, dedupe (QueueKeys.publish)
-- ARGV: dedupe_ttl_seconds (0: off), then fields (id, body, priority, delay_seconds)*
-- -> per message 1 (stored) or 0 (id already queued, delayed, in flight or recently enqueued)
local ready, delayed, body, score, notify, seq, dedupe = unpack(KEYS)
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
local top = redis.call('INCRBY', seq, n)
if ttl > 0 and top % 64 < n then
  -- expired markers are ignored below; removing them once per 64 messages is enough
  redis.call('ZREMRANGEBYSCORE', dedupe, '-inf', fmt(t))
end
local bodies, scores, due_now, due_later, marks, taken, out = {}, {}, {}, {}, {}, {}, {}
for i = 1, n do
  local j = (i - 1) * 4
  local id, payload, priority, delay = f[j + 1], f[j + 2], tonumber(f[j + 3]), tonumber(f[j + 4])
  if queued[i] or (known[i] and tonumber(known[i]) > t) or taken[id] then
    out[i] = 0
  else
    taken[id] = true
    -- priority first, then FIFO: see PRIORITY_WEIGHT
    local s = string.format('%d', top - n + i - priority * PRIORITY_WEIGHT)
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = payload
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
  wake(notify)
end
return out
