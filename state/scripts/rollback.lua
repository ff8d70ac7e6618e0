-- Rolls a partition's state back to before the last write that touched it, when that write's
-- transaction never committed (exactly-once serving; see apply_batch.lua, "Undo"); either way
-- the undo record is then dropped.
--
-- ARGV: 1 key prefix, 2 partition, 3 the group's committed offset for the partition (-1: none),
--       4 ttl seconds (of restored windows).
-- Returns the number of windows restored, or -1 when the write had committed (nothing to do).

local PREFIX, partition, committed, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local key = PREFIX .. ':undo:' .. partition
local flat = redis.call('HGETALL', key)
if #flat == 0 then return -1 end
redis.call('DEL', key)
local fields = {}
for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
local stop = tonumber(fields['end'])
if stop < 0 or committed >= stop then return -1 end

local quiet = PREFIX .. ':quiet:' .. partition
redis.call('HINCRBY', PREFIX .. ':version', partition, 1)  -- a write: see apply_batch.lua
local restored = 0
for field, value in pairs(fields) do
  local kind, name = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'w:' then
    if value == '' then redis.call('DEL', name) else redis.call('SET', name, value, 'EX', ttl) end
    restored = restored + 1
  elseif kind == 'z:' then
    if value == '' then redis.call('ZREM', quiet, name) else redis.call('ZADD', quiet, value, name) end
  elseif field == 'c' then
    if value == '' then redis.call('HDEL', PREFIX .. ':clock', partition)
    else redis.call('HSET', PREFIX .. ':clock', partition, value) end
  end
end
return restored
