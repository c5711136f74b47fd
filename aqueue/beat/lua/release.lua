-- KEYS: lease; ARGV: holder -> 1 if the holder's lease was given up
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
