-- KEYS: lease, entries, code, since, state, paused, version
-- -> {version, holder or '', entries (name, spec...), code names, since (name, us...),
--     state (name, bytes...), paused names}: one consistent read
local lease, entries, code, since, state, paused, version = unpack(KEYS)
return {
  redis.call('GET', version) or '0',
  redis.call('GET', lease) or '',
  redis.call('HGETALL', entries),
  redis.call('SMEMBERS', code),
  redis.call('HGETALL', since),
  redis.call('HGETALL', state),
  redis.call('SMEMBERS', paused),
}
