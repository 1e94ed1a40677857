-- Keep a list just served to a user, to be attributed to the user's next event.
--
-- KEYS[1] - the user's served lists (skiprec:{user_id}:served), newest first, each
--           "state|request_id|served_at|track,track,...|label" (state "" while it
--           waits for the next event; see append_events.lua for the others)
-- KEYS[2] - the user's dedup sorted set (skiprec:{user_id}:dedup): event id -> the
--           API's receive time as a dedup score (integer microseconds; the same
--           slot: one hash tag)
-- ARGV[1] - the list as stored, without its state: "|request_id|served_at|..."
-- ARGV[2] - served_at as a dedup score: the API's clock when it read the session
--           for this list
-- ARGV[3] - lists kept per user (older ones are dropped, LTRIM)
-- ARGV[4] - TTL of the key, seconds
-- return 1 when kept waiting, 0 when kept already superseded
--
-- The list is written after its answer was sent (service/outcomes.py). An event the
-- API received after it read the session but before this write arrived was the
-- next event of the listener: this list was never the latest one for it, so it is
-- kept superseded ("-") instead of waiting for the event after that.
local served_at = tonumber(ARGV[2])
local newest = redis.call("ZRANGE", KEYS[2], -1, -1, "WITHSCORES")
local state = ""
if newest[2] and tonumber(newest[2]) > served_at then
  state = "-"
end
local pushed = redis.pcall("LPUSH", KEYS[1], state .. ARGV[1])
if type(pushed) == "table" and pushed.err then
  -- a refusal at the first write, unwrapped (see append_events.lua)
  return redis.error_reply(string.match(pushed.err, "%-(%u+ .*)$") or pushed.err)
end
redis.call("LTRIM", KEYS[1], 0, tonumber(ARGV[3]) - 1)
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[4]))
if state == "" then
  return 1
end
return 0
