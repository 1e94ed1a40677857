-- Append the events of one or more users atomically: dedup, insert in time order,
-- trim, expire; then attribute each user's new events to the lists served to them.
--
-- KEYS[3u-2] - user u's event list (skiprec:{user_id}:events), in time order
-- KEYS[3u-1] - user u's dedup sorted set (skiprec:{user_id}:dedup): event id -> receive
--              time in integer microseconds (service.keys.dedup_score)
-- KEYS[3u]   - user u's served lists (skiprec:{user_id}:served), newest first, each
--              "state|request_id|served_at|track,track,...|label"; state is
--              ""                    waiting for the listener's next event,
--              "-"                   superseded (its next event came before it
--                                    was stored),
--              "rank:p|s:event_id"   attributed to that event (rank 0-based, -1
--                                    when the track was not in the list)
--              (every key of one call shares a hash slot: the caller groups users
--              by slot, on a Cluster and behind a sharding proxy alike)
-- ARGV[1] - max events kept per list (LTRIM keeps the newest ARGV[1])
-- ARGV[2] - TTL of an event list, seconds
-- ARGV[3] - TTL of dedup entries, seconds (older entries are pruned, the key expires)
-- ARGV[4] - now, unix seconds (the API's clock, so replicas and replays agree)
-- ARGV[5] - how long a served list waits for its next event, seconds
-- ARGV[6] - now as a dedup score (integer microseconds)
-- ARGV[7] - the oldest dedup score kept (now less the dedup TTL, microseconds)
-- ARGV[8], ARGV[9], ARGV[10], ... - user 1's events as triples: event id (never
--   empty: the API derives one when the client sends none), encoded event, the
--   request id of the served list the client names ("" for none); an encoded event
--   that starts with "~" is too late for the live session: deduplicated and
--   counted, never stored, never attributed. Each further user's triples follow a
--   lone "|" argument (never an event id: ids are [A-Za-z0-9._:@-]). With one user
--   (3 KEYS) there is no "|".
-- return {accepted, duplicates, accepted skips, accepted late, attribution, ...}:
--   the counts summed over the users, then one "request_id|rank|p|s|label" per
--   attribution, including those a retried event made before (count_outcomes.lua
--   counts each request id once)
--
-- The list stays ordered by event time (the stored event's last field), ties in
-- arrival order: a user's new events are appended when they come in order (the
-- common case), else merged into the list once per call (skiprec.sessions.time_order
-- is the Python twin, under equality tests).
-- An id already stored with this very call's receive time was stored by this call's
-- first delivery (a resend after a lost reply): it counts as accepted, not twice.
-- A repeated id within the call counts as a duplicate like any earlier one.
--
-- Attribution, exactly once: a new event (or a resend's) that names no request id
-- takes the user's newest list when that one still waits and is younger than
-- ARGV[5]; one naming a request id takes that list when it waits. A list is
-- attributed once: its state records the event, so a retried event (a duplicate)
-- finds it again and reports the same attribution, never a second one. The served
-- lists are read at most once per user and call, only for a user with an event on
-- time, and only the newest of them when that is all the events need.
-- Arguments handed on to redis.call stay strings, and the prune bounds are built
-- once per call: Lua formats a number as text through sprintf at every use.
local max_events = tonumber(ARGV[1])
local session_ttl = ARGV[2]
local dedup_ttl = ARGV[3]
local now = tonumber(ARGV[4])
local wait = tonumber(ARGV[5])
local received = ARGV[6]
local received_score = tonumber(received)
-- Scores in seconds (at most now plus the TTL, whatever the replicas' clock skew)
-- were stored before scores were microseconds (a million times their time): each
-- kind is pruned on its own clock, so the upgrade forgets none.
local seconds_above = "(" .. (now + tonumber(dedup_ttl))
local seconds_expired = "(" .. (now - tonumber(dedup_ttl))
local micros_expired = "(" .. ARGV[7]

local accepted = 0
local duplicates = 0
local skips = 0
local late = 0
local attributions = {}

local function stamp(entry)
  return tonumber(string.match(entry, "|([^|]*)$"))
end

-- RPUSH in chunks: unpack() of a long list would overflow Lua's C stack. Returns
-- the list's length.
local function push_all(events_key, entries, first)
  local length = 0
  for i = first, #entries, 1000 do
    length = redis.call("RPUSH", events_key,
                        unpack(entries, i, math.min(i + 999, #entries)))
  end
  return length
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
    -- Every redis.call has a fixed cost beyond the command's own, a large part of
    -- a batch's time per event: trim only a list that outgrew the cap.
    if push_all(events_key, fresh, 1) > max_events then
      redis.call("LTRIM", events_key, -max_events, -1)
    end
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
end

local function finish(events_key, dedup_key, fresh, used_dedup)
  if #fresh > 0 then
    store(events_key, fresh)
  end
  -- a no-op on a user whose list does not exist (no event on time yet)
  redis.call("EXPIRE", events_key, session_ttl)
  if used_dedup then
    redis.call("ZREMRANGEBYSCORE", dedup_key, seconds_above, micros_expired)
    redis.call("ZREMRANGEBYSCORE", dedup_key, "-inf", seconds_expired)
    redis.call("EXPIRE", dedup_key, dedup_ttl)
  end
end

local function rank_of(tracks, track)
  local position = 0
  for served in string.gmatch(tracks, "[^,]+") do
    if served == track then
      return position
    end
    position = position + 1
  end
  return -1
end

local function report(list, rank, code)
  attributions[#attributions + 1] =
    list.request_id .. "|" .. rank .. "|" .. code .. "|" .. list.label
end

local function parse_list(entry, index)
  local state, request_id, served_at, tracks, label =
    string.match(entry, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$")
  return {index = index, state = state, request_id = request_id,
          served_at = tonumber(served_at), tracks = tracks, label = label,
          rest = string.sub(entry, #state + 2)}
end

-- A user's served lists, read once per call and only as far as needed: the
-- newest alone (LINDEX) for a new event that names no list, the common case; all
-- of them (LRANGE, newest first) for one that names a list and for a duplicate
-- looking for the list it answered before. ``lists`` caches both readings.
--
-- The newest list when it still waits, else nil. Most events come after their
-- list was answered: an entry that does not start with "|" (a state) is not
-- parsed, the larger part of a batch's attribution work.
local function newest_waiting(served_key, lists)
  local newest
  if lists.all then
    newest = lists.all[1]
  else
    if lists.newest == nil then
      local entry = redis.call("LINDEX", served_key, 0)
      lists.newest = entry and string.byte(entry, 1) == 124 and parse_list(entry, 0)
    end
    newest = lists.newest
  end
  if newest and newest.state == "" then
    return newest
  end
  return nil
end

local function all_lists(served_key, lists)
  if not lists.all then
    local all = {}
    for j, entry in ipairs(redis.call("LRANGE", served_key, 0, -1)) do
      -- the newest may be parsed already, and changed (attributed) since; false
      -- when it was not parsed
      all[j] = (j == 1 and lists.newest) or parse_list(entry, j - 1)
    end
    lists.all = all
  end
  return lists.all
end

-- The attribution of one on-time event of ``track`` (``skip``: "s" or "p"):
-- ``fresh`` when this call stored it, ``resent`` when a resend of this call did;
-- otherwise a duplicate, which can only report the list it answered before. Only
-- a duplicate or a resend looks for an earlier answer: an id the dedup set does
-- not remember is a new event, here as in the session (one retried after the dedup
-- TTL answers the list now waiting, not one it may have answered back then).
local function attribute(served_key, lists, event_id, track, skip, named, fresh, resent)
  if not fresh then
    for _, list in ipairs(all_lists(served_key, lists)) do
      local rank, was, by = string.match(list.state, "^(-?%d+):([ps]):(.*)$")
      if by == event_id then
        report(list, rank, was)
        return
      end
    end
    if not resent then
      return
    end
  end
  local target = nil
  if named == "" then
    target = newest_waiting(served_key, lists)
  else
    for _, list in ipairs(all_lists(served_key, lists)) do
      if list.request_id == named then
        target = list
        break
      end
    end
  end
  if target and target.state == "" and now - target.served_at <= wait then
    local rank = rank_of(target.tracks, track)
    target.state = rank .. ":" .. skip .. ":" .. event_id
    redis.call("LSET", served_key, target.index, target.state .. "|" .. target.rest)
    report(target, rank, skip)
  end
end

local in_call = {} -- ids met earlier in this call: a repeat is a duplicate
local user = 1
local fresh_events = {} -- this user's new events for the live session, arrival order
local used_dedup = false
local lists = {} -- this user's served lists as read so far (newest_waiting, all_lists)
local i = 8
while i <= #ARGV do
  local event_id = ARGV[i]
  if event_id == "|" then
    finish(KEYS[3 * user - 2], KEYS[3 * user - 1], fresh_events, used_dedup)
    user = user + 1
    fresh_events = {}
    used_dedup = false
    lists = {}
    i = i + 1
  else
    used_dedup = true
    local dedup_key = KEYS[3 * user - 1]
    local entry = ARGV[i + 1]
    local is_late = string.sub(entry, 1, 1) == "~"
    if is_late then
      entry = string.sub(entry, 2)
    end
    -- ZADD NX returns 1 only when the id was not present yet. The score is an
    -- integer: a small sorted set is a listpack, where an insert reads the score
    -- of every entry before it, and an integer is read as it is stored while a
    -- fraction is parsed from its text.
    local added = redis.pcall("ZADD", dedup_key, "NX", received, event_id)
    if type(added) == "table" and added.err then
      -- A refusal (OOM, READONLY) comes at the first write, before any effect:
      -- returned as the server's own error ("OOM ..."), which Redis 6 would wrap
      -- in a generic script error ("@user_script: N: -OOM ...") clients cannot
      -- tell from a bug.
      return redis.error_reply(string.match(added.err, "%-(%u+ .*)$") or added.err)
    end
    local fresh = added == 1
    -- encoded event: event_id|track_id|code|timestamp; a skip is code "s" or
    -- skip level 0 or 1 (skiprec.events.level_is_skip)
    local track = string.match(entry, "^[^|]*|([^|]*)|")
    local skip = string.match(entry, "^[^|]*|[^|]*|[s01]|") and "s" or "p"
    local here = user .. "|" .. event_id
    local resent = not fresh and not in_call[here]
      and tonumber(redis.call("ZSCORE", dedup_key, event_id)) == received_score
    in_call[here] = true
    if fresh or resent then
      if fresh and not is_late then
        fresh_events[#fresh_events + 1] = entry
      end
      accepted = accepted + 1
      if is_late then
        late = late + 1
      end
      if skip == "s" then
        skips = skips + 1
      end
    else
      duplicates = duplicates + 1
    end
    if not is_late then
      attribute(KEYS[3 * user], lists, event_id, track, skip, ARGV[i + 2], fresh, resent)
    end
    i = i + 3
  end
end
finish(KEYS[3 * user - 2], KEYS[3 * user - 1], fresh_events, used_dedup)
local reply = {accepted, duplicates, skips, late}
for _, text in ipairs(attributions) do
  reply[#reply + 1] = text
end
return reply
