-- Applies one batch of events to the customers' packed windows in one call, and finds the
-- customers whose silence crossed a mark while the batch moved each partition's clock.
--
-- KEYS: for customer i (1-based): KEYS[2i-1] = window key, KEYS[2i] = profile key
--       (both carry the customer's hash tag, so one customer stays in one Cluster slot).
-- ARGV: 1 capacity, 2 lateness seconds, 3 ttl seconds, 4 event count n, 5 mode,
--       6 update count m, 7 events: n packed 32-byte records '<IIdIIII' (customer index,
--       partition, offset, ts, coarse code, fine code, tag), 8 updates: m packed 28-byte
--       '<IIIIIfI' (customer index, flags, alert ts, next-action ts, predicted activity code,
--       churn risk, prediction ts), 9 key prefix, 10 silence marks: packed '<I' seconds,
--       ascending (empty: silence is not tracked), 11 clocks: packed '<II' (partition, event
--       time the partition's clock moves to, at least), 12 undo: '1' keeps, with a 'w' write,
--       an undo record per partition it touches (exactly-once serving; see below), else '';
--       after the '1', the writer's claims: packed '<II' (partition, owner generation), and a
--       write whose partitions are not all claimed by it at their current generation is
--       refused whole, returning -1 (fenced; see "Owners" below),
--       13 the number of customers with events in this batch (KEYS beyond them: customers
--       scored for their silence, in 'w' mode, whose only change is their alert state),
--       14 the most customers one clock move finds due at one mark on one partition (a page;
--       see "Paging"), 15-17 optional, 'w' only: the write precomputed from the 'r' reply
--       (see below).
--       Packed, the batch is a few arguments instead of 7n (no per-field parsing in the
--       client or the server). Updates are applied in 'w' mode only, in the same atomic call
--       as the events, so a client killed mid-send never leaves a window without its alert
--       and prediction state.
--       A silence-scored customer did nothing: its update overwrites the header's alert and
--       prediction fields in place (SETRANGE), which neither extends its retention nor brings
--       back a window that expired since the read.
--       mode: 'r' computes and replies without writing (the scorer scores from this, and
--       writes only after the outputs are acknowledged), 'w' writes and replies 1 when it
--       stored a precomputed write, else 0; 'rw' both.
--       The same batch gives the same result in every mode, so 'r' then 'w' equals 'rw'.
--
-- Window value: a 44-byte header (offset as double, partition, count, first ts, alert ts,
-- flags, next-action ts, predicted activity code, churn risk as float, prediction ts) and
-- 16-byte records (ts, coarse, fine, tag) in event-time order.
--
-- Silence: {prefix}:quiet:{partition} is a sorted set of the partition's customers by their
-- last event time, kept while they are younger than the last mark; {prefix}:clock holds
-- each partition's event-time clock. A partition's clock moves from c0 (stored) to c1 (the
-- clocks argument, at least c0); a customer is due at mark m when last + m lies in (c0, c1].
-- Due customers come back with their windows (as extra customers after the batch's own);
-- the caller decides, from the batch's order, whether they were still silent at the mark.
--
-- Precomputed write: {prefix}:version holds a counter per partition that every write touching
-- the partition moves. An 'r' reply carries the versions it read; the client then computes the
-- windows that applying the batch stores, and sends them with the 'w' call (ARGV 15: the values
-- concatenated, 16: per own customer '<III' value length (0: unchanged), last event time for
-- the quiet set (0: none), partition; 17: '<Id' per partition, the version read). If no write
-- touched those partitions since the read, storing them equals applying the events again and
-- skips that work; else (an erasure, a rebuild, a former owner of the partition writing late)
-- the events are applied again, on what is stored now. Not with undo records.
--
-- Undo (exactly-once): {prefix}:undo:{partition} is a hash of what the last write touching the
-- partition replaced: 'end' (the write's highest offset + 1 there, -1 with no event), 'c' the
-- clock, 'w:'..window key the old value, 'z:'..customer the old sorted-set score ('' = absent).
-- A member given the partition rolls it back (rollback.lua) when its committed offset is below
-- 'end': the transaction holding that write's outputs and offsets never committed.
--
-- Owners (exactly-once): {prefix}:owner holds a generation per partition, moved by each member
-- that is given the partition, before it checks the partition's undo record. A member paused
-- (GC, a frozen VM) past its session still holds the claim it made; its late write carries that
-- old generation and is refused, so it can neither store a batch its successor then takes for a
-- replay (and emits nothing for) nor overwrite what the successor stored.
--
-- Per event: 0 applied, 1 replay (offset already applied and its record found: nothing
-- changes), 2 duplicate event_id (ignored), 3 late but inserted in event-time order, 4 too
-- late (beyond the lateness bound: not stored); plus 256 (MOVED_FLAG) and 512 (BEHIND_FLAG). Position: the event's record index (1-based) in the returned
-- records (all stored ones plus this batch's, trimmed to capacity only when written), or for
-- status 4 the number of records at or before its time; 0 when a replayed event's record is gone.
--
-- Returns {headers, records, profiles, per-event status/position, due, due names, clocks,
-- deferred}: headers (48 bytes) and profiles (2 bytes) in customer order, records concatenated
-- (count in each header), 4 bytes per event, due '<IIII' (customer index, partition, last ts,
-- mark), the ids of the extra customers, clocks '<IIId' (partition, c0, c1, write version),
-- deferred '<I' per partition with events whose due customers did not fit in a page.

local HDR, REC = 44, 16
local MOVED_FLAG = 256  -- added to an event's status: its customer's last event was on another partition
local BEHIND_FLAG = 512  -- added to an event's status: new, at an offset its window had passed (see below)
-- A window erased by `seqscore erase` is a tombstone: a header with this flag, no records, and the
-- partition and last offset the erasure covers. An event at or before that offset is a replay (an
-- in-flight batch, a rebuild, a rollback's replay): it restores nothing. A later one starts afresh.
local FLAG_ERASED = 2
local function erased(s) return s.count == 0 and bit.band(s.flags, FLAG_ERASED) ~= 0 end
local capacity, lateness, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local writes, replies = string.find(ARGV[5], 'w', 1, true) ~= nil, string.find(ARGV[5], 'r', 1, true) ~= nil
local n_updates = tonumber(ARGV[6])
local EVENTS, UPDATES, PREFIX, MARKS, CLOCKS = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local keeps_undo = string.sub(ARGV[12], 1, 1) == '1'
local CLAIMS = string.sub(ARGV[12], 2)
local n_own = tonumber(ARGV[13])
local EV, UPD = 32, 28
local ncust = #KEYS / 2
local ALERT_AT, ALERT_FIELDS = 20, '<IIIIfI'  -- the header's alert and prediction fields
local clock_key, version_key = PREFIX .. ':clock', PREFIX .. ':version'
local MAX_DUE = tonumber(ARGV[14])
local PRE_VALUES, PRE_META, PRE_VERSIONS = ARGV[15] or '', ARGV[16] or '', ARGV[17] or ''

local function quiet_key(partition) return PREFIX .. ':quiet:' .. partition end
local function window_key(id) return PREFIX .. ':{c:' .. id .. '}:w' end
local function profile_key(id) return PREFIX .. ':{c:' .. id .. '}:p' end
local function customer_of(key) return string.sub(key, #PREFIX + 5, #key - 3) end

local marks = {}
for k = 1, #MARKS / 4 do marks[k] = (struct.unpack('<I', MARKS, (k - 1) * 4 + 1)) end

local function load(raw)
  local s = {dirty = false, grew = false}
  if raw then
    s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags, s.nba_ts, s.pred_code, s.pred_risk, s.pred_ts =
      struct.unpack('<dIIIIIIIfI', raw)
    s.recs = string.sub(raw, HDR + 1)
  else
    s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags = -1, 0, 0, 0, 0, 0
    s.nba_ts, s.pred_code, s.pred_risk, s.pred_ts = 0, 0, 0, 0
    s.recs = ''
  end
  return s
end

-- Many keys (or members) per call: a redis.call costs more than the GET it runs. Chunked, as
-- unpack is bounded by Lua's C stack.
local CALL_CHUNK = 1000
local function mget(names)  -- missing keys come back as nil
  local values = {}
  for from = 1, #names, CALL_CHUNK do
    local upto = math.min(from + CALL_CHUNK - 1, #names)
    local got = redis.call('MGET', unpack(names, from, upto))
    for j = 1, upto - from + 1 do values[from + j - 1] = got[j] or nil end
  end
  return values
end

-- each partition's clock: from the stored c0 (0 for a partition seen for the first time) to c1
local clocks = {}
for k = 1, #CLOCKS / 8 do
  local partition, floor = struct.unpack('<II', CLOCKS, (k - 1) * 8 + 1)
  local stored = tonumber(redis.call('HGET', clock_key, partition)) or 0
  clocks[k] = {partition, stored, math.max(floor, stored)}
end

if writes and #CLAIMS > 0 then
  local claimed = {}
  for k = 1, #CLAIMS / 8 do
    local partition, generation = struct.unpack('<II', CLAIMS, (k - 1) * 8 + 1)
    claimed[partition] = generation
  end
  for _, clock in ipairs(clocks) do
    local current = tonumber(redis.call('HGET', PREFIX .. ':owner', clock[1])) or 0
    if claimed[clock[1]] ~= current then return -1 end
  end
end

local function note_quiet(quiet_of, partition, last_ts, key)
  local members = quiet_of[partition]
  if not members then members = {}; quiet_of[partition] = members end
  members[#members + 1] = last_ts
  members[#members + 1] = customer_of(key)
end

local function add_quiet(quiet_of)  -- partition -> score, member, ...: one ZADD per partition
  for partition, members in pairs(quiet_of) do
    for from = 1, #members, 2 * CALL_CHUNK do
      redis.call('ZADD', quiet_key(partition), unpack(members, from, math.min(from + 2 * CALL_CHUNK - 1, #members)))
    end
  end
end

-- The write's updates: an own customer's go to on_own(ci, fields...); a silence-scored
-- customer's come back as index -> packed alert fields, with the indexes in update order.
local function read_updates(on_own)
  local alert_only, alert_order = {}, {}
  for k = 1, n_updates do
    local ci, flags, alert_ts, nba_ts, pred_code, pred_risk, pred_ts = struct.unpack('<IIIIIfI', UPDATES, (k - 1) * UPD + 1)
    if ci > n_own then
      if not alert_only[ci] then alert_order[#alert_order + 1] = ci end
      alert_only[ci] = struct.pack(ALERT_FIELDS, alert_ts, flags, nba_ts, pred_code, pred_risk, pred_ts)
    elseif on_own then
      on_own(ci, flags, alert_ts, nba_ts, pred_code, pred_risk, pred_ts)
    end
  end
  return alert_only, alert_order
end

-- present_of: index -> the window read before (with an undo record); nil: one EXISTS each
local function write_alert_only(alert_only, alert_order, present_of)
  for _, ci in ipairs(alert_order) do
    local head
    if present_of then head = present_of[ci] else head = redis.call('GETRANGE', KEYS[2 * ci - 1], 0, HDR - 1) end
    -- absent (expired, erased) or a tombstone: a silence scored before the erasure stores nothing
    if head and #head >= HDR and not erased(load(head)) then
      redis.call('SETRANGE', KEYS[2 * ci - 1], ALERT_AT, alert_only[ci])
    end
  end
end

local function move_clocks()
  for _, clock in ipairs(clocks) do
    redis.call('HSET', clock_key, clock[1], clock[3])
    if #marks > 0 then  -- past the last mark nobody is due again until they return
      redis.call('ZREMRANGEBYSCORE', quiet_key(clock[1]), '-inf', '(' .. (clock[3] - marks[#marks]))
    end
    redis.call('HINCRBY', version_key, clock[1], 1)  -- every write moves its partitions' versions
  end
end

local function unchanged_since_read()
  if PRE_META == '' or replies or keeps_undo or #PRE_VERSIONS / 12 ~= #clocks then return false end
  for k = 1, #PRE_VERSIONS / 12 do
    local partition, version = struct.unpack('<Id', PRE_VERSIONS, (k - 1) * 12 + 1)
    if (tonumber(redis.call('HGET', version_key, partition)) or 0) ~= version then return false end
  end
  return true
end

if writes and unchanged_since_read() then
  local quiet_of, at = {}, 1
  for i = 1, n_own do
    local len, last_ts, partition = struct.unpack('<III', PRE_META, (i - 1) * 12 + 1)
    if len > 0 then
      redis.call('SET', KEYS[2 * i - 1], string.sub(PRE_VALUES, at, at + len - 1), 'EX', ttl)
      redis.call('EXPIRE', KEYS[2 * i], ttl)
      at = at + len
      if last_ts > 0 and #marks > 0 then note_quiet(quiet_of, partition, last_ts, KEYS[2 * i - 1]) end
    end
  end
  add_quiet(quiet_of)
  write_alert_only(read_updates(nil))
  move_clocks()
  return 1
end

local state, index_of, keys = {}, {}, {}
-- a silence-scored customer's window is read only to keep it for an undo
local n_read = keeps_undo and ncust or n_own
local window_names = {}
for i = 1, n_read do window_names[i] = KEYS[2 * i - 1] end
local raw_of = mget(window_names)
for i = 1, ncust do
  keys[i] = {KEYS[2 * i - 1], KEYS[2 * i]}
  state[i] = load(raw_of[i])
  index_of[KEYS[2 * i - 1]] = i
end

local function rec_ts(recs, i) return (struct.unpack('<I', recs, (i - 1) * REC + 1)) end

-- Index (1-based) of the record of the event with `tag` and time `ts`, 0 if none: a repeated
-- event (a producer's retry, a DLQ record replayed twice) carries both. Matching the time as
-- well as the 32-bit tag leaves a distinct event taken for a repeat only when it shares its
-- second and its tag with a stored one; the tag alone, checked against the newest 32 records,
-- made that about once in 134 million events, and CRC32 collisions are easy to make. Records
-- are in time order: the walk back from the newest stops at the event's own time.
local function find_tag_at(recs, tag, ts)
  local i = #recs / REC
  while i > 0 and rec_ts(recs, i) > ts do i = i - 1 end
  while i > 0 and rec_ts(recs, i) == ts do
    if (struct.unpack('<I', recs, (i - 1) * REC + 13)) == tag then return i end
    i = i - 1
  end
  return 0
end

local status, tags, times, position, moved, behind = {}, {}, {}, {}, {}, {}
local applied_of = {}  -- per customer: the events applied in this batch, to shift on a late insert
local with_events = {}  -- partitions with events in this call
for e = 1, n do
  local ci, part, off, ts, coarse, fine, tag = struct.unpack('<IIdIIII', EVENTS, (e - 1) * EV + 1)
  local s = state[ci]
  with_events[part] = true
  tags[e], times[e] = tag, ts
  -- the customer's previous event came from another partition: two members may write it
  moved[e] = (s.count > 0 and part ~= s.partition) and MOVED_FLAG or 0
  local passed = (s.count > 0 or erased(s)) and part == s.partition and off <= s.offset
  -- an offset the window has passed: a replay (a restart, a rebalance, a group reset to the
  -- earliest offset reads again what was applied) is still in the window, found by its time and
  -- tag, or was trimmed away: the window is full and the event is no newer than its oldest
  -- record. Any other event is new (the topic was re-created, or its offsets reset to a copy:
  -- a restore, a mirror after a disaster) and is applied, except to a tombstone, which keeps
  -- everything at or before its offset erased.
  local trimmed = #s.recs >= capacity * REC and ts <= rec_ts(s.recs, 1)
  behind[e] = 0
  if passed and (erased(s) or trimmed or find_tag_at(s.recs, tag, ts) > 0) then
    status[e] = 1
  elseif not passed and find_tag_at(s.recs, tag, ts) > 0 then
    status[e] = 2
  else
    if passed then behind[e] = BEHIND_FLAG end
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
      s.flags = bit.band(s.flags, bit.bnot(FLAG_ERASED))
      if s.count == 0 or ts < s.first then s.first = ts end
      s.count = s.count + 1
      s.grew = true
    end
  end
  if status[e] ~= 1 then
    if behind[e] == 0 then s.offset, s.partition = off, part end  -- a replay's test stays as it was
    s.dirty = true
  end
end

-- due: customers whose last event + a mark falls inside the clock's move (found before this
-- call's writes, so 'rw' answers as 'r' does)
-- Paging: a move without events that finds MAX_DUE customers at a mark stops the clock short
-- of the customers at the newest silence start it found (or just past them, when they all
-- share it): they and everyone after them are due at the next move, which starts where this
-- one stopped. The reply's c1 says where; the caller's 'w' call moves the clock that far only.
-- A partition with events cannot stop short of them: it is deferred, and the caller reads the
-- batch again without that partition's events, whose clock then moves by pages up to them,
-- unless its move is one second, which finds one silence start per mark, taken whole.
local due, due_names, due_found, n_first, deferred = {}, {}, {}, ncust, {}
if #marks > 0 and replies then
  for _, clock in ipairs(clocks) do
    local partition, c0, c1 = clock[1], clock[2], clock[3]
    if c1 > c0 then
      local pages = {}
      for _, mark in ipairs(marks) do
        local found = redis.call('ZRANGEBYSCORE', quiet_key(partition), '(' .. (c0 - mark), c1 - mark,
          'WITHSCORES', 'LIMIT', 0, MAX_DUE)
        -- a move of one second has one silence start per mark, and no shorter move exists:
        -- it takes everyone at it, events or not
        if #found == 2 * MAX_DUE and with_events[partition] and c1 - c0 > 1 then
          deferred[#deferred + 1] = struct.pack('<I', partition)
        elseif #found == 2 * MAX_DUE then
          local oldest, newest = tonumber(found[2]), tonumber(found[#found])
          if newest > oldest then
            clock[3] = math.min(clock[3], newest - 1 + mark)
          else  -- one silence start for the whole page: take everyone at it, however many
            found = redis.call('ZRANGEBYSCORE', quiet_key(partition), newest, newest, 'WITHSCORES')
            clock[3] = math.min(clock[3], newest + mark)
          end
        end
        pages[#pages + 1] = {mark, found}
      end
      c1 = clock[3]
      for _, page in ipairs(pages) do
        local mark, found = page[1], page[2]
        for j = 1, #found, 2 do
          if tonumber(found[j + 1]) + mark <= c1 then
            local key = window_key(found[j])
            local ci = index_of[key]
            if not ci then
              ncust = ncust + 1
              ci = ncust
              index_of[key] = ci
              keys[ci] = {key, profile_key(found[j])}
              due_names[#due_names + 1] = found[j]
            end
            due_found[#due_found + 1] = {ci, partition, tonumber(found[j + 1]), mark}
          end
        end
      end
    end
  end
  -- the customers found only here: their windows in one read
  local new_names = {}
  for k = 1, #due_names do new_names[k] = keys[n_first + k][1] end
  local new_raws = mget(new_names)
  for k = 1, #due_names do
    raw_of[n_first + k] = new_raws[k]
    state[n_first + k] = load(new_raws[k])
  end
  for _, d in ipairs(due_found) do
    if state[d[1]].count > 0 then due[#due + 1] = struct.pack('<IIII', d[1], d[2], d[3], d[4]) end
  end
end

if writes then
  local alert_only, alert_order = read_updates(function(ci, flags, alert_ts, nba_ts, pred_code, pred_risk, pred_ts)
    local s = state[ci]
    if erased(s) then return end  -- scored before the erasure: nothing of it is stored
    s.flags, s.alert_ts, s.nba_ts, s.pred_code, s.pred_risk, s.pred_ts = flags, alert_ts, nba_ts, pred_code, pred_risk, pred_ts
    s.dirty = true
  end)
  -- what this write replaces, per partition, before anything is replaced
  local undo, ends = {}, {}
  local function undo_of(partition)
    local u = undo[partition]
    if not u then u = {}; undo[partition] = u end
    return u
  end
  if keeps_undo then
    for e = 1, n do
      local _, part, off = struct.unpack('<IIdIIII', EVENTS, (e - 1) * EV + 1)
      ends[part] = math.max(ends[part] or -1, off + 1)
      undo_of(part)
    end
    for i = 1, ncust do
      local s = state[i]
      if s.dirty or (alert_only[i] and raw_of[i] and not erased(s)) then
        local u = undo_of(s.partition)
        u['w:' .. keys[i][1]] = raw_of[i] or ''
        if s.grew and #marks > 0 then
          local customer = customer_of(keys[i][1])
          u['z:' .. customer] = redis.call('ZSCORE', quiet_key(s.partition), customer) or ''
        end
      end
    end
    for _, clock in ipairs(clocks) do
      local u = undo_of(clock[1])
      u['c'] = redis.call('HGET', clock_key, clock[1]) or ''
      if #marks > 0 then
        local pruned = redis.call('ZRANGEBYSCORE', quiet_key(clock[1]), '-inf', '(' .. (clock[3] - marks[#marks]),
          'WITHSCORES')
        for j = 1, #pruned, 2 do
          if u['z:' .. pruned[j]] == nil then u['z:' .. pruned[j]] = pruned[j + 1] end
        end
      end
    end
    for partition, u in pairs(undo) do
      -- a write without events on the partition (a sweep, an idle clock move, silences) has no
      -- offsets for a rollback to compare: its record would never apply, and replacing the
      -- record of a write still waiting for its commit would leave that one without undo
      if ends[partition] then
      local key = PREFIX .. ':undo:' .. partition
      redis.call('DEL', key)
      local pairs_out = {'end', ends[partition]}
      for field, value in pairs(u) do
        pairs_out[#pairs_out + 1] = field
        pairs_out[#pairs_out + 1] = value
        if #pairs_out >= 1000 then redis.call('HSET', key, unpack(pairs_out)); pairs_out = {} end
      end
      if #pairs_out > 0 then redis.call('HSET', key, unpack(pairs_out)) end
      redis.call('EXPIRE', key, ttl)
      end
    end
  end
  local quiet_of = {}
  for i = 1, ncust do
    local s = state[i]
    if s.dirty then
      -- trimmed only when stored: every event of this batch keeps its full window in the reply
      local keep = s.recs
      if #keep > capacity * REC then keep = string.sub(keep, #keep - capacity * REC + 1) end
      local header = struct.pack('<dIIIIIIIfI', s.offset, s.partition, s.count, s.first, s.alert_ts, s.flags,
        s.nba_ts, s.pred_code, s.pred_risk, s.pred_ts)
      redis.call('SET', keys[i][1], header .. keep, 'EX', ttl)
      redis.call('EXPIRE', keys[i][2], ttl)
      if s.grew and #marks > 0 then note_quiet(quiet_of, s.partition, rec_ts(keep, #keep / REC), keys[i][1]) end
    end
  end
  add_quiet(quiet_of)
  write_alert_only(alert_only, alert_order, keeps_undo and raw_of or nil)
  move_clocks()
end
if not replies then return 0 end

local headers, records, profiles, profile_names = {}, {}, {}, {}
for i = 1, ncust do profile_names[i] = keys[i][2] end
local profile_values = mget(profile_names)
for i = 1, ncust do
  local s = state[i]
  headers[i] = struct.pack('<dIIIIIIIIfI', s.offset, s.partition, #s.recs / REC, s.first, s.alert_ts, s.flags,
    s.count, s.nba_ts, s.pred_code, s.pred_risk, s.pred_ts)
  records[i] = s.recs
  profiles[i] = profile_values[i] or '\255\255'
end

local positions = {}
for e = 1, n do
  local s = state[(struct.unpack('<I', EVENTS, (e - 1) * EV + 1))]
  local pos = position[e]
  if status[e] == 4 then
    pos = #s.recs / REC
    while pos > 0 and rec_ts(s.recs, pos) > times[e] do pos = pos - 1 end
  elseif not pos then  -- replay or duplicate: where the earlier copy sits, if still kept
    pos = find_tag_at(s.recs, tags[e], times[e])
  end
  positions[e] = struct.pack('<HH', status[e] + moved[e] + behind[e], pos)
end

local clock_out = {}
for k, clock in ipairs(clocks) do
  local version = tonumber(redis.call('HGET', version_key, clock[1])) or 0
  clock_out[k] = struct.pack('<IIId', clock[1], clock[2], clock[3], version)
end

return {table.concat(headers), table.concat(records), table.concat(profiles), table.concat(positions),
  table.concat(due), due_names, table.concat(clock_out), table.concat(deferred)}
