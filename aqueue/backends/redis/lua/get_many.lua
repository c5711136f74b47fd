-- ARGV: key head, key tail, task ids... -> each id's record (nil where absent). One call
-- per batch: a worker reads the records of every claimed batch (revocations, duplicates),
-- and a command per id would cost more client CPU than the rest of the task's Redis path.
local out = {}
for i = 3, #ARGV do
  out[i - 2] = redis.call('HGET', ARGV[1] .. ARGV[i] .. ARGV[2], RECORD_FIELD)
end
return out
