-- KEYS: ready, delayed, body, score, count, epoch, dedupe (QueueKeys.purge)
-- ARGV: batch -> number removed (at most batch from each of ready and delayed); their ids
-- leave the dedupe set too, so they may be published again
local ready, delayed, body, score, count, epoch, dedupe = unpack(KEYS)
local removed = 0
for _, z in ipairs({ready, delayed}) do
  local ids = redis.call('ZRANGE', z, 0, tonumber(ARGV[1]) - 1)
  if #ids > 0 then
    redis.call('ZREM', z, unpack(ids))
    for _, h in ipairs({body, score, count, epoch}) do redis.call('HDEL', h, unpack(ids)) end
    redis.call('ZREM', dedupe, unpack(ids))
    removed = removed + #ids
  end
end
return removed
