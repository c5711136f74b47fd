-- KEYS: ready, delayed, inflight, body, score, count, epoch, notify, dead (QueueKeys.settle)
-- ARGV: dead_letter_limit, then fields (op, id, token, a, b)*
--   op ACK | RELEASE (a = '1' if executed) | REQUEUE (a = body, b = delay)
--   | DEAD_LETTER (a = reason)
-- -> per operation 1 (done) or 0 (the token no longer holds the message)
local ready, delayed, inflight, body, score, count, epoch, notify, dead = unpack(KEYS)
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
    if op == ACK then
      gone[#gone + 1] = id
    elseif op == DEAD_LETTER then
      t = t or now()
      -- the body's first DEAD_LETTER_BODY_LIMIT bytes and its size: a huge message must
      -- not stay huge (up to dead_letter_limit of them per queue); parse_dead_letter reads it
      local payload = redis.call('HGET', body, id) or ''
      local size = #payload
      if size > DEAD_LETTER_BODY_LIMIT then
        payload = string.sub(payload, 1, DEAD_LETTER_BODY_LIMIT)
      end
      local entry = string.format('2\n%s\n%d\n%d\n%d\n', fmt(t), #id, #a, size)
      redis.call('LPUSH', dead, entry .. id .. a .. payload)
      redis.call('LTRIM', dead, 0, cap - 1)
      gone[#gone + 1] = id
    else
      redis.call('ZREM', inflight, id)
      -- a new epoch: the handed-back lease's token is dead, so a late renew or ack by
      -- the old holder cannot grab or remove the message again
      redis.call('HINCRBY', epoch, id, 1)
      local s = redis.call('HGET', score, id) or '0'
      if op == RELEASE then
        if a ~= '1' then redis.call('HINCRBY', count, id, -1) end
        redis.call('ZADD', ready, s, id)
      else -- REQUEUE
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
if woke then wake(notify) end
return out
