-- one pending token is enough: a woken claimer passes it on while work remains
local function wake(notify)
  if redis.call('LPUSH', notify, '1') > 1 then redis.call('LTRIM', notify, 0, 0) end
end
