"""The Lua scripts of the Redis engine: each change that touches several keys runs as one
script, so Redis applies it atomically (a send past ``max_length`` refuses the whole batch;
a nack's settle and rewrite, a publish's fan-out to every bound queue, and the move of due
delayed messages are never half done)."""

#: Topic matching as the router does it: '*' one word, '#' zero or more.
MATCH = """
local function split(s)
  local t = {}
  for w in string.gmatch(s .. ".", "([^.]*)%.") do t[#t + 1] = w end
  return t
end
local function match(p, pi, k, ki)
  if pi > #p then return ki > #k end
  if p[pi] == "#" then
    for j = ki, #k + 1 do
      if match(p, pi + 1, k, j) then return true end
    end
    return false
  end
  if ki > #k then return false end
  if p[pi] == "*" or p[pi] == k[ki] then return match(p, pi + 1, k, ki + 1) end
  return false
end
"""

# KEYS[1] stream; ARGV[1] max length (0: none), then (body, meta, failures) per message.
SEND = """
local max = tonumber(ARGV[1])
if max > 0 and redis.call('XLEN', KEYS[1]) + (#ARGV - 1) / 3 > max then
  return redis.error_reply('FULL queue is at its max_length')
end
for i = 2, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'b', ARGV[i], 'm', ARGV[i + 1], 'c', ARGV[i + 2])
end
return (#ARGV - 1) / 3
"""

# ARGV[1] topic, then (body, meta) per event: append to every queue bound by a matching pattern.
PUBLISH = MATCH + """
local key = split(ARGV[1])
local routed = 0
for _, binding in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sep = string.find(binding, "\\31", 1, true)
  local pattern, queue = string.sub(binding, 1, sep - 1), string.sub(binding, sep + 1)
  if match(split(pattern), 1, key, 1) then
    for i = 2, #ARGV, 2 do
      redis.call('XADD', 'tidings:q:' .. queue, '*', 'b', ARGV[i], 'm', ARGV[i + 1], 'c', '0')
    end
    routed = routed + 1
  end
end
return routed
"""

# KEYS[1] stream the ids are in; ARGV group, ids...: settle for good.
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

# Settle an entry and write it again. KEYS[1] its stream, KEYS[2] where it goes (a stream, or
# the delayed set); ARGV group, id, body, meta, failures, due (0: now), queue, delay id.
REWRITE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if tonumber(ARGV[6]) > 0 then
  local hash = 'tidings:d:' .. ARGV[8]
  redis.call('HSET', hash, 'q', KEYS[2], 'b', ARGV[3], 'm', ARGV[4], 'c', ARGV[5],
             'n', ARGV[7])
  redis.call('ZADD', 'tidings:delayed', ARGV[6], ARGV[8])
  redis.call('HINCRBY', 'tidings:delayed:counts', ARGV[7], 1)
else
  redis.call('XADD', KEYS[2], '*', 'b', ARGV[3], 'm', ARGV[4], 'c', ARGV[5])
end
return 1
"""

# ARGV[1] now (ms), ARGV[2] at most this many: move due delayed messages into their streams;
# returns the next due time (or -1).
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', 'tidings:delayed', '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  local hash = 'tidings:d:' .. id
  local m = redis.call('HMGET', hash, 'q', 'b', 'm', 'c', 'n')
  if m[1] then
    if redis.call('EXISTS', m[1]) == 1 then
      redis.call('XADD', m[1], '*', 'b', m[2], 'm', m[3], 'c', m[4])
    end
    redis.call('HINCRBY', 'tidings:delayed:counts', m[5], -1)
  end
  redis.call('DEL', hash)
  redis.call('ZREM', 'tidings:delayed', id)
end
local nxt = redis.call('ZRANGE', 'tidings:delayed', 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
return nxt[2]
"""

# ARGV[1] delay id, ARGV[2] queue: cancel a delayed message unless the mover took it.
CANCEL_DELAYED = """
if redis.call('ZREM', 'tidings:delayed', ARGV[1]) == 0 then return 0 end
redis.call('DEL', 'tidings:d:' .. ARGV[1])
redis.call('HINCRBY', 'tidings:delayed:counts', ARGV[2], -1)
return 1
"""

# Append records to a tidings stream. KEYS[1] the Redis stream, KEYS[2] the hash of stream
# ends, KEYS[3] the hash of stream sizes; ARGV[1] the stream's name, ARGV[2] its max bytes
# (0: none), ARGV[3] its max age in ms (0: none), then (body, meta) per record. A record's
# entry id is "<offset + 1>-0" (so offsets are dense and addressable); it keeps its append
# time (t) and size (z). Retention drops whole records from the head, at most 1,000 a call.
APPEND_RECORDS = """
local name = ARGV[1]
local max_bytes, max_age = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(redis.call('HGET', KEYS[2], name) or '0')
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local added = 0
for i = 4, #ARGV, 2 do
  local size = string.len(ARGV[i]) + string.len(ARGV[i + 1])
  redis.call('XADD', KEYS[1], (n + 1) .. '-0', 'b', ARGV[i], 'm', ARGV[i + 1], 't', ms,
             'z', size)
  n = n + 1
  added = added + size
end
redis.call('HSET', KEYS[2], name, n)
local total = redis.call('HINCRBY', KEYS[3], name, added)
if max_bytes > 0 or max_age > 0 then
  local dropped, upto = 0, 0
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1000)
  for _, entry in ipairs(head) do
    local fields = {}
    for j = 1, #entry[2], 2 do fields[entry[2][j]] = entry[2][j + 1] end
    local id = tonumber(string.match(entry[1], '^(%d+)'))
    local old = max_age > 0 and tonumber(fields['t']) < ms - max_age
    local big = max_bytes > 0 and total - dropped > max_bytes and id < n
    if not (old or big) then break end
    dropped, upto = dropped + tonumber(fields['z']), id
  end
  if dropped > 0 then
    redis.call('XTRIM', KEYS[1], 'MINID', (upto + 1) .. '-0')
    redis.call('HINCRBY', KEYS[3], name, -dropped)
  end
end
return n
"""
