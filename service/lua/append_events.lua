-- Append a batch of one user's events atomically: dedup, append, trim, expire.
--
-- KEYS[1] - the user's event list (skiprec:{user_id}:events), oldest first
-- KEYS[2] - the user's dedup sorted set (skiprec:{user_id}:dedup): event id -> receive time
-- ARGV[1] - max events kept in the list (LTRIM keeps the newest ARGV[1])
-- ARGV[2] - TTL of the event list, seconds
-- ARGV[3] - TTL of dedup entries, seconds (older entries are pruned, the key expires)
-- ARGV[4] - now, unix seconds (the API's clock, so replicas and replays agree)
-- ARGV[5], ARGV[6], ... - pairs: event id ("" = no id, never deduplicated), encoded event
-- return {accepted, duplicates, accepted skips}
--
-- Events are appended in argument order; a repeated id within the batch counts as a
-- duplicate like any earlier one.
local max_events = tonumber(ARGV[1])
local session_ttl = tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])

local accepted = 0
local duplicates = 0
local skips = 0
local used_dedup = false
for i = 5, #ARGV, 2 do
  local event_id = ARGV[i]
  local fresh = true
  if event_id ~= "" then
    used_dedup = true
    -- ZADD NX returns 1 only when the id was not present yet.
    fresh = redis.call("ZADD", KEYS[2], "NX", now, event_id) == 1
  end
  if fresh then
    redis.call("RPUSH", KEYS[1], ARGV[i + 1])
    accepted = accepted + 1
    -- encoded event: event_id|track_id|type code|timestamp, type code "p" or "s"
    if string.match(ARGV[i + 1], "^[^|]*|[^|]*|s|") then
      skips = skips + 1
    end
  else
    duplicates = duplicates + 1
  end
end

if accepted > 0 then
  redis.call("LTRIM", KEYS[1], -max_events, -1)
end
if redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("EXPIRE", KEYS[1], session_ttl)
end
if used_dedup then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. (now - dedup_ttl))
  redis.call("EXPIRE", KEYS[2], dedup_ttl)
end
return {accepted, duplicates, skips}
