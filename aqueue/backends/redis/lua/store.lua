-- KEYS: none on one server; on a Redis Cluster, the one record's key (its own slot)
-- ARGV: key head, key tail, then fields (task id, record, state, attempt, ttl_ms, reply)*
--   ttl_ms -1 means no expiry; reply: the sender's reply channel, or empty.
--   -> per record 1 (stored) or 0 (fenced).
-- The rule is aqueue.core.states.supersedes() (READY: the ready states). Each record is
-- published on a channel named like its key, and to the reply channel with the task id in
-- front. On one server the keys are built here from the ids, so one call stores a whole
-- batch of results; records live in different cluster slots, so a cluster's store is one
-- call per record, naming its key (RedisClusterBackend).
local f = split(ARGV[3], ARGV[4])
local out = {}
for i = 1, #f / 6 do
  local j = (i - 1) * 6
  local id, record, state, attempt, ttl, reply = f[j + 1], f[j + 2], f[j + 3], f[j + 4], f[j + 5], f[j + 6]
  local key = KEYS[i] or (ARGV[1] .. id .. ARGV[2])
  local cur = redis.call('HMGET', key, 'a', 's', 'v')
  local ok = true
  if cur[1] then
    local stored = tonumber(cur[1])
    local n = tonumber(attempt)
    if n ~= stored then ok = n > stored else ok = not READY[cur[2]] end
  end
  if ok then
    local v = (tonumber(cur[3]) or 0) + 1
    redis.call('HSET', key, RECORD_FIELD, record, 's', state, 'a', attempt, 'v', v)
    local ms = tonumber(ttl)
    if ms >= 0 then
      redis.call('PEXPIRE', key, ms)
    elseif cur[1] then
      redis.call('PERSIST', key)
    end
    local payload = string.format('%d:', v) .. record
    redis.call('PUBLISH', key, payload)
    if reply ~= '' then redis.call('PUBLISH', reply, id .. '\n' .. payload) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
