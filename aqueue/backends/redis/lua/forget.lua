-- KEYS: result key; ARGV: channel. Watchers see version 0 and start counting afresh.
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], '0:')
return 1
