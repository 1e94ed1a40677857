-- What the model and the exclusion policy need from a user's current session.
--
-- KEYS[1] - the user's event list (skiprec:{user_id}:events), oldest first, each
--           event a stored event (skiprec.events.StoredEvent.encode):
--           event_id|track_id|code|timestamp, code one of "p", "s" or a skip
--           level's digit "0".."3"
-- ARGV[1] - now, unix seconds
-- ARGV[2] - the session gap, seconds: the current session is the events after the
--           last gap longer than this between consecutive events, and empty once
--           the last event is older than this
-- ARGV[3] - window: how many of the session's newest events to return in full
-- return {window track ids joined by "|", their codes as one string ("ps3"),
--         the distinct (track id, code) pairs of the session's events before the
--         window: track ids joined by "|", their codes as one string};
--         all four "" for an empty session
--
-- The session cut is skiprec.sessions.current_session_start in the same
-- double-precision arithmetic (tests/service/test_session_store.py runs the same
-- cases through both); what is excluded is decided in Python (skiprec.policy).
local raw = redis.call("LRANGE", KEYS[1], 0, -1)
local now = tonumber(ARGV[1])
local gap = tonumber(ARGV[2])
local window = tonumber(ARGV[3])

local tracks = {}
local codes = {}
local earlier = {}
local earlier_codes = {}
local seen = {}
local later = nil
for i = #raw, 1, -1 do
  local _, track, code, stamp = string.match(raw[i], "^([^|]*)|([^|]*)|(%w)|(.*)$")
  local ts = tonumber(stamp)
  if later == nil then
    if now - ts > gap then
      break
    end
  elseif later - ts > gap then
    break
  end
  later = ts
  if #tracks < window then
    tracks[#tracks + 1] = track
    codes[#codes + 1] = code
  elseif not seen[code .. track] then
    seen[code .. track] = true
    earlier[#earlier + 1] = track
    earlier_codes[#earlier_codes + 1] = code
  end
end

local n = #tracks
for j = 1, math.floor(n / 2) do
  tracks[j], tracks[n - j + 1] = tracks[n - j + 1], tracks[j]
  codes[j], codes[n - j + 1] = codes[n - j + 1], codes[j]
end
return {
  table.concat(tracks, "|"), table.concat(codes),
  table.concat(earlier, "|"), table.concat(earlier_codes),
}
