-- Take up to ARGV[2] messages off a Celery queue's lists, highest priority list first, and
-- record each in kombu's unacked hash and index (kombu's ack emulation) in the same atomic
-- step: a message is always either on its list or in ``unacked``, where kombu's (and the
-- bridge's) visibility-timeout restore finds it if the bridge dies before handing it over.
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3..] the queue's lists.
-- ARGV[1] now (unix seconds), ARGV[2] limit.
-- Returns payload1, tag1, payload2, tag2, ... (tag "" when the payload carries none:
-- such a message is not kombu's and is not recorded).
local limit = tonumber(ARGV[2])
local out = {}
local taken = 0
for i = 3, #KEYS do
  while taken < limit do
    local payload = redis.call('RPOP', KEYS[i])
    if not payload then break end
    taken = taken + 1
    local tag, exchange, routing_key = '', '', ''
    local ok, message = pcall(cjson.decode, payload)
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      local props = message.properties
      if type(props.delivery_tag) == 'string' then tag = props.delivery_tag end
      local info = props.delivery_info
      if type(info) == 'table' then
        if type(info.exchange) == 'string' then exchange = info.exchange end
        if type(info.routing_key) == 'string' then routing_key = info.routing_key end
      end
    end
    if tag ~= '' then
      -- kombu's entry: [message, exchange, routing_key], the message kept byte for byte
      local entry = '[' .. payload .. ',' .. cjson.encode(exchange) .. ',' ..
        cjson.encode(routing_key) .. ']'
      redis.call('HSET', KEYS[1], tag, entry)
      redis.call('ZADD', KEYS[2], ARGV[1], tag)
    end
    out[#out + 1] = payload
    out[#out + 1] = tag
  end
end
return out
