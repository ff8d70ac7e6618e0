-- The header and the newest records of each window key, for the segments scan: what a page
-- of customers needs (about 172 bytes each) instead of whole windows (about 850).
-- KEYS: window keys. ARGV: 1 header bytes, 2 bytes of records wanted from the end.
-- Returns per key: header .. newest records, or '' for a key gone since the SCAN.
local HDR, TAIL = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('STRLEN', key)
  if n < HDR then
    out[i] = ''
  elseif n == HDR then
    out[i] = redis.call('GETRANGE', key, 0, HDR - 1)
  else
    out[i] = redis.call('GETRANGE', key, 0, HDR - 1) .. redis.call('GETRANGE', key, math.max(HDR, n - TAIL), n - 1)
  end
end
return out
