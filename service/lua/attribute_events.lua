-- Attribute users' new events to the lists served to them (run right after the
-- append script, in the same pipeline, on the same slot).
--
-- KEYS[2u-1] - user u's served lists (skiprec:{user_id}:served), newest first, each
--              "state|request_id|served_at|track,track,...|label"; state is
--              ""                    waiting for the listener's next event,
--              "-"                   superseded (its next event came before it
--                                    was stored),
--              "rank:p|s:event_id"   attributed to that event (rank 0-based, -1
--                                    when the track was not in the list)
-- KEYS[2u]   - user u's dedup sorted set (skiprec:{user_id}:dedup): event id ->
--              the API's receive time
-- ARGV[1] - now: the receive time the append script of this request stored
-- ARGV[2] - how long a list waits, seconds (older ones are not attributed)
-- ARGV[3], ARGV[4], ... - user 1's events in arrival order as quadruples: event id,
--   track id, "p" or "s", the request id the client named ("" for none); each
--   further user's follow a lone "|" (never an event id)
-- return one "request_id|rank|p|s|label" per attribution, including those a
--   retried event made before (the counter script counts each request id once)
--
-- Exactly once: an event is new in this request when its dedup entry carries this
-- request's receive time (the append script's ZADD NX, or a resend of the same
-- call); an event that names no request id takes the newest list when that one is
-- still waiting, one naming a request id takes that list when it is. A list is
-- attributed once: its state records the event, so a retried event (a duplicate)
-- finds it again and reports the same attribution, never a second one.
local now = tonumber(ARGV[1])
local wait = tonumber(ARGV[2])
local out = {}

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
  out[#out + 1] = list.request_id .. "|" .. rank .. "|" .. code .. "|" .. list.label
end

-- ARGV[first .. last]: one user's quadruples.
local function attribute_user(served_key, dedup_key, first, last)
  local lists = {}
  for j, entry in ipairs(redis.call("LRANGE", served_key, 0, -1)) do
    local state, request_id, served_at, tracks, label =
      string.match(entry, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$")
    lists[j] = {index = j - 1, state = state, request_id = request_id,
                served_at = tonumber(served_at), tracks = tracks, label = label,
                rest = string.sub(entry, #state + 2)}
  end
  if #lists == 0 then
    return
  end
  for i = first, last, 4 do
    local event_id, track, code, named = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local earlier = false
    for _, list in ipairs(lists) do
      local rank, was, by = string.match(list.state, "^(-?%d+):([ps]):(.*)$")
      if by == event_id then
        report(list, rank, was)
        earlier = true
        break
      end
    end
    if not earlier and tonumber(redis.call("ZSCORE", dedup_key, event_id)) == now then
      local target = nil
      if named == "" then
        target = lists[1]
      else
        for _, list in ipairs(lists) do
          if list.request_id == named then
            target = list
            break
          end
        end
      end
      if target and target.state == "" and now - target.served_at <= wait then
        local rank = rank_of(target.tracks, track)
        target.state = rank .. ":" .. code .. ":" .. event_id
        redis.call("LSET", served_key, target.index, target.state .. "|" .. target.rest)
        report(target, rank, code)
      end
    end
  end
end

local user = 1
local first = 3
local i = 3
while i <= #ARGV do
  if ARGV[i] == "|" then
    attribute_user(KEYS[2 * user - 1], KEYS[2 * user], first, i - 1)
    user = user + 1
    first = i + 1
    i = i + 1
  else
    i = i + 4
  end
end
attribute_user(KEYS[2 * user - 1], KEYS[2 * user], first, #ARGV)
return out
