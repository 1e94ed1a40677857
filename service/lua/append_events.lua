-- Append the events of one or more users atomically: dedup, append, trim, expire.
--
-- KEYS[2u-1] - user u's event list (skiprec:{user_id}:events), oldest first
-- KEYS[2u]   - user u's dedup sorted set (skiprec:{user_id}:dedup): event id -> receive time
--              (on a Cluster every key of one call must share a slot: the caller
--              groups users by slot)
-- ARGV[1] - max events kept per list (LTRIM keeps the newest ARGV[1])
-- ARGV[2] - TTL of an event list, seconds
-- ARGV[3] - TTL of dedup entries, seconds (older entries are pruned, the key expires)
-- ARGV[4] - now, unix seconds (the API's clock, so replicas and replays agree)
-- ARGV[5], ARGV[6], ... - user 1's events as pairs: event id ("" = no id, never
--   deduplicated), encoded event; each further user's pairs follow a lone "|"
--   argument (never an event id: ids are [A-Za-z0-9._:@-]). With one user (2 KEYS)
--   there is no "|".
-- return {accepted, duplicates, accepted skips}, summed over the users
--
-- A user's events are appended in argument order; a repeated id within the call
-- counts as a duplicate like any earlier one.
local max_events = tonumber(ARGV[1])
local session_ttl = tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])

local accepted = 0
local duplicates = 0
local skips = 0

local function finish(events_key, dedup_key, appended, used_dedup)
  if appended then
    redis.call("LTRIM", events_key, -max_events, -1)
  end
  if redis.call("EXISTS", events_key) == 1 then
    redis.call("EXPIRE", events_key, session_ttl)
  end
  if used_dedup then
    redis.call("ZREMRANGEBYSCORE", dedup_key, "-inf", "(" .. (now - dedup_ttl))
    redis.call("EXPIRE", dedup_key, dedup_ttl)
  end
end

local user = 1
local appended = false
local used_dedup = false
local i = 5
while i <= #ARGV do
  local event_id = ARGV[i]
  if event_id == "|" then
    finish(KEYS[2 * user - 1], KEYS[2 * user], appended, used_dedup)
    user = user + 1
    appended = false
    used_dedup = false
    i = i + 1
  else
    local fresh = true
    if event_id ~= "" then
      used_dedup = true
      -- ZADD NX returns 1 only when the id was not present yet.
      fresh = redis.call("ZADD", KEYS[2 * user], "NX", now, event_id) == 1
    end
    if fresh then
      redis.call("RPUSH", KEYS[2 * user - 1], ARGV[i + 1])
      appended = true
      accepted = accepted + 1
      -- encoded event: event_id|track_id|code|timestamp; a skip is code "s" or
      -- skip level 0 or 1 (skiprec.events.level_is_skip)
      if string.match(ARGV[i + 1], "^[^|]*|[^|]*|[s01]|") then
        skips = skips + 1
      end
    else
      duplicates = duplicates + 1
    end
    i = i + 2
  end
end
finish(KEYS[2 * user - 1], KEYS[2 * user], appended, used_dedup)
return {accepted, duplicates, skips}
