-- Helpers a script may start with (Script.load(..., uses=[HELPERS])).

-- the Redis server's clock, in seconds: every worker compares times on this one clock
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- a number as a string with every digit kept (Lua's own conversion keeps only 14)
local function fmt(x) return string.format('%.17g', x) end

-- Fields travel as two strings (big-endian u32 lengths, then the bytes joined), so a batch
-- costs the client two arguments, not thousands (see scripts.pack_fields).
local function split(lens, data)
  local out, pos = {}, 1
  for i = 1, #lens / 4 do
    local len = struct.unpack('>I4', lens, (i - 1) * 4 + 1)
    out[i] = string.sub(data, pos, pos + len - 1)
    pos = pos + len
  end
  return out
end

-- every width-th field of f, starting at the k-th (one column of a row-major table)
local function column(f, width, k)
  local out = {}
  for i = k, #f, width do out[#out + 1] = f[i] end
  return out
end
