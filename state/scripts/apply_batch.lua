-- Applies one batch of events to the customers' packed windows in one call.
--
-- KEYS: for customer i (1-based): KEYS[2i-1] = window key, KEYS[2i] = profile key
--       (both carry the customer's hash tag, so one customer stays in one Cluster slot).
-- ARGV: capacity, lateness seconds, ttl seconds, event count n, mode, alert update count m,
--       events: n packed 32-byte records '<IIdIIII' (customer index, partition, offset, ts,
--       coarse code, fine code, tag), alerts: m packed '<III' (customer index, alerted 0/1,
--       alert ts). Packed, the batch is one argument instead of 7n (no per-field parsing
--       in the client or the server). Alert updates are applied in 'w' mode only, in the same
--       atomic call as the events, so a client killed mid-send never leaves a window without
--       its alert state.
--       mode: 'r' computes and replies without writing (the scorer scores from this, and
--       writes only after the outputs are acknowledged), 'w' writes and replies 0, 'rw' both.
--       The same batch gives the same result in every mode, so 'r' then 'w' equals 'rw'.
--
-- Window value: a 32-byte header (offset as double, partition, count, first ts, alert ts,
-- flags, reserved) and 16-byte records (ts, coarse, fine, tag) in event-time order.
--
-- Per event: 0 applied, 1 replay (offset already applied: nothing changes), 2 duplicate
-- event_id (ignored), 3 late but inserted in event-time order, 4 too late (beyond the
-- lateness bound: not stored). Position: the event's record index (1-based) in the returned
-- records (all stored ones plus this batch's, trimmed to capacity only when written), or for
-- status 4 the number of records at or before its time; 0 when a replayed event's record is gone.
--
-- Returns {headers, records, profiles, per-event status/position}: headers and profiles
-- in customer order (32 and 2 bytes each), records concatenated (count in each header),
-- and 4 bytes per event.

local HDR, REC = 32, 16
local TAG_SCAN = 32
local capacity, lateness, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local writes, replies = string.find(ARGV[5], 'w', 1, true) ~= nil, string.find(ARGV[5], 'r', 1, true) ~= nil
local n_alerts = tonumber(ARGV[6])
local EVENTS, ALERTS = ARGV[7], ARGV[8]
local EV = 32
local ncust = #KEYS / 2

local state = {}
for i = 1, ncust do
  local raw = redis.call('GET', KEYS[2 * i - 1])
  local s = {dirty = false}
  if raw then
    s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags = struct.unpack('<dIIIII', raw)
    s.recs = string.sub(raw, HDR + 1)
  else
    s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags = -1, 0, 0, 0, 0, 0
    s.recs = ''
  end
  state[i] = s
end

local function rec_ts(recs, i) return (struct.unpack('<I', recs, (i - 1) * REC + 1)) end

-- Index (1-based) of the record carrying `tag` among the last `limit` records, 0 if none.
-- string.find runs in C; a hit counts only where it lines up with a record's tag field.
local function find_tag(recs, tag, limit)
  local needle = struct.pack('<I', tag)
  local from = math.max(1, #recs - limit * REC + 1)
  while true do
    local at = string.find(recs, needle, from, true)
    if not at then return 0 end
    if (at - 1) % REC == 12 then return (at - 13) / REC + 1 end
    from = at + 1
  end
end

local status, tags, times, position = {}, {}, {}, {}
local applied_of = {}  -- per customer: the events applied in this batch, to shift on a late insert
for e = 1, n do
  local ci, part, off, ts, coarse, fine, tag = struct.unpack('<IIdIIII', EVENTS, (e - 1) * EV + 1)
  local s = state[ci]
  tags[e], times[e] = tag, ts
  if s.count > 0 and part == s.partition and off <= s.offset then
    status[e] = 1
  elseif find_tag(s.recs, tag, TAG_SCAN) > 0 then
    status[e] = 2
  else
    local nrec = #s.recs / REC
    local record = struct.pack('<IIII', ts, coarse, fine, tag)
    local mine = applied_of[ci]
    if not mine then mine = {}; applied_of[ci] = mine end
    if nrec == 0 or ts >= rec_ts(s.recs, nrec) then
      s.recs = s.recs .. record
      status[e] = 0
      position[e] = nrec + 1
      mine[#mine + 1] = e
    elseif rec_ts(s.recs, nrec) - ts > lateness then
      status[e] = 4
    else
      local at = nrec
      while at > 0 and rec_ts(s.recs, at) > ts do at = at - 1 end
      s.recs = string.sub(s.recs, 1, at * REC) .. record .. string.sub(s.recs, at * REC + 1)
      for _, other in ipairs(mine) do
        if position[other] > at then position[other] = position[other] + 1 end
      end
      status[e] = 3
      position[e] = at + 1
      mine[#mine + 1] = e
    end
    if status[e] ~= 4 then
      if s.count == 0 or ts < s.first then s.first = ts end
      s.count = s.count + 1
    end
  end
  if status[e] ~= 1 then
    s.offset, s.partition = off, part
    s.dirty = true
  end
end

if writes then
  for k = 1, n_alerts do
    local ci, alerted, alert_ts = struct.unpack('<III', ALERTS, (k - 1) * 12 + 1)
    local s = state[ci]
    s.flags = s.flags - s.flags % 2 + alerted
    s.alert_ts = alert_ts
    s.dirty = true
  end
  for i = 1, ncust do
    local s = state[i]
    if s.dirty then
      -- trimmed only when stored: every event of this batch keeps its full window in the reply
      local keep = s.recs
      if #keep > capacity * REC then keep = string.sub(keep, #keep - capacity * REC + 1) end
      local header = struct.pack('<dIIIII', s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags) .. string.rep('\0', 4)
      redis.call('SET', KEYS[2 * i - 1], header .. keep, 'EX', ttl)
      redis.call('EXPIRE', KEYS[2 * i], ttl)
    end
  end
end
if not replies then return 0 end

local headers, records, profiles = {}, {}, {}
for i = 1, ncust do
  local s = state[i]
  headers[i] = struct.pack('<dIIIII', s.offset, s.partition, #s.recs / REC, s.first, s.alert_ts, s.flags) .. struct.pack('<I', s.count)
  records[i] = s.recs
  profiles[i] = redis.call('GET', KEYS[2 * i]) or '\255\255'
end

local positions = {}
for e = 1, n do
  local s = state[(struct.unpack('<I', EVENTS, (e - 1) * EV + 1))]
  local pos = position[e]
  if status[e] == 4 then
    pos = #s.recs / REC
    while pos > 0 and rec_ts(s.recs, pos) > times[e] do pos = pos - 1 end
  elseif not pos then  -- replay or duplicate: where the earlier copy sits, if still kept
    pos = find_tag(s.recs, tags[e], #s.recs / REC)
  end
  positions[e] = struct.pack('<HH', status[e], pos)
end

return {table.concat(headers), table.concat(records), table.concat(profiles), table.concat(positions)}
