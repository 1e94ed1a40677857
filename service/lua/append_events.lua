-- Append the events of one or more users atomically: dedup, insert in time order,
-- trim, expire.
--
-- KEYS[2u-1] - user u's event list (skiprec:{user_id}:events), in time order
-- KEYS[2u]   - user u's dedup sorted set (skiprec:{user_id}:dedup): event id -> receive time
--              (every key of one call shares a hash slot: the caller groups users
--              by slot, on a Cluster and behind a sharding proxy alike)
-- ARGV[1] - max events kept per list (LTRIM keeps the newest ARGV[1])
-- ARGV[2] - TTL of an event list, seconds
-- ARGV[3] - TTL of dedup entries, seconds (older entries are pruned, the key expires)
-- ARGV[4] - now, unix seconds (the API's clock, so replicas and replays agree)
-- ARGV[5], ARGV[6], ... - user 1's events as pairs: event id (never empty: the API
--   derives one when the client sends none), encoded event; an encoded event that
--   starts with "~" is too late for the live session: deduplicated and counted, never
--   stored. Each further user's pairs follow a lone "|" argument (never an event id:
--   ids are [A-Za-z0-9._:@-]). With one user (2 KEYS) there is no "|".
-- return {accepted, duplicates, accepted skips, accepted late}, summed over the users
--
-- The list stays ordered by event time (the stored event's last field), ties in
-- arrival order: a user's new events are appended when they come in order (the
-- common case), else merged into the list once per call (skiprec.sessions.time_order
-- is the Python twin, under equality tests).
-- An id already stored with this very call's receive time was stored by this call's
-- first delivery (a resend after a lost reply): it counts as accepted, not twice.
-- A repeated id within the call counts as a duplicate like any earlier one.
local max_events = tonumber(ARGV[1])
local session_ttl = tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])

local accepted = 0
local duplicates = 0
local skips = 0
local late = 0

local function stamp(entry)
  return tonumber(string.match(entry, "|([^|]*)$"))
end

-- RPUSH in chunks: unpack() of a long list would overflow Lua's C stack.
local function push_all(events_key, entries, first)
  for i = first, #entries, 1000 do
    redis.call("RPUSH", events_key, unpack(entries, i, math.min(i + 999, #entries)))
  end
end

-- Store a user's new events (arrival order) in the time-ordered list, newest
-- max_events kept. In order (the common case): one RPUSH. Otherwise one merge of the
-- list with the new events, sorted stably (ties: stored first, then arrival order).
local function store(events_key, fresh)
  local last = redis.call("LINDEX", events_key, -1)
  local previous = last and stamp(last) or -math.huge
  local in_order = true
  for _, entry in ipairs(fresh) do
    local ts = stamp(entry)
    if ts < previous then
      in_order = false
      break
    end
    previous = ts
  end
  if in_order then
    push_all(events_key, fresh, 1)
  else
    local order = {}
    for i, entry in ipairs(fresh) do
      order[i] = {stamp(entry), i, entry}
    end
    table.sort(order, function(a, b)
      return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
    end)
    local stored = redis.call("LRANGE", events_key, 0, -1)
    local merged = {}
    local j = 1
    for _, entry in ipairs(stored) do
      local ts = stamp(entry)
      while j <= #order and order[j][1] < ts do
        merged[#merged + 1] = order[j][3]
        j = j + 1
      end
      merged[#merged + 1] = entry
    end
    for k = j, #order do
      merged[#merged + 1] = order[k][3]
    end
    redis.call("DEL", events_key)
    push_all(events_key, merged, math.max(1, #merged - max_events + 1))
  end
  redis.call("LTRIM", events_key, -max_events, -1)
end

local function finish(events_key, dedup_key, fresh, used_dedup)
  if #fresh > 0 then
    store(events_key, fresh)
  end
  if redis.call("EXISTS", events_key) == 1 then
    redis.call("EXPIRE", events_key, session_ttl)
  end
  if used_dedup then
    redis.call("ZREMRANGEBYSCORE", dedup_key, "-inf", "(" .. (now - dedup_ttl))
    redis.call("EXPIRE", dedup_key, dedup_ttl)
  end
end

local in_call = {} -- ids met earlier in this call: a repeat is a duplicate
local user = 1
local fresh_events = {} -- this user's new events for the live session, arrival order
local used_dedup = false
local i = 5
while i <= #ARGV do
  local event_id = ARGV[i]
  if event_id == "|" then
    finish(KEYS[2 * user - 1], KEYS[2 * user], fresh_events, used_dedup)
    user = user + 1
    fresh_events = {}
    used_dedup = false
    i = i + 1
  else
    used_dedup = true
    local entry = ARGV[i + 1]
    local is_late = string.sub(entry, 1, 1) == "~"
    if is_late then
      entry = string.sub(entry, 2)
    end
    -- ZADD NX returns 1 only when the id was not present yet.
    local added = redis.pcall("ZADD", KEYS[2 * user], "NX", now, event_id)
    if type(added) == "table" and added.err then
      -- A refusal (OOM, READONLY) comes at the first write, before any effect:
      -- returned as the server's own error ("OOM ..."), which Redis 6 would wrap
      -- in a generic script error ("@user_script: N: -OOM ...") clients cannot
      -- tell from a bug.
      return redis.error_reply(string.match(added.err, "%-(%u+ .*)$") or added.err)
    end
    local fresh = added == 1
    local here = user .. "|" .. event_id
    local resent = not fresh and not in_call[here]
      and tonumber(redis.call("ZSCORE", KEYS[2 * user], event_id)) == now
    in_call[here] = true
    if fresh or resent then
      if fresh and not is_late then
        fresh_events[#fresh_events + 1] = entry
      end
      accepted = accepted + 1
      if is_late then
        late = late + 1
      end
      -- encoded event: event_id|track_id|code|timestamp; a skip is code "s" or
      -- skip level 0 or 1 (skiprec.events.level_is_skip)
      if string.match(entry, "^[^|]*|[^|]*|[s01]|") then
        skips = skips + 1
      end
    else
      duplicates = duplicates + 1
    end
    i = i + 2
  end
end
finish(KEYS[2 * user - 1], KEYS[2 * user], fresh_events, used_dedup)
return {accepted, duplicates, skips, late}
