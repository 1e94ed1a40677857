-- What the model and the exclusion rule need from a user's current session.
--
-- KEYS[1] - the user's event list (skiprec:{user_id}:events), oldest first, each
--           event encoded as event_id|track_id|type code ("p"/"s")|timestamp
-- ARGV[1] - now, unix seconds
-- ARGV[2] - the session gap, seconds: the current session is the events after the
--           last gap longer than this between consecutive events, and empty once
--           the last event is older than this
-- ARGV[3] - window: how many of the session's newest events to return in full
-- ARGV[4] - "1": played tracks before the window are excluded too (not only skipped)
-- return {window track ids joined by "|", their type codes as one string ("psp"),
--         distinct excluded track ids of the session's events before the window,
--         joined by "|"}; all three "" for an empty session
--
-- The arithmetic is the same double-precision arithmetic as
-- service.session_store.current_session, so both cut a session at the same event.
local raw = redis.call("LRANGE", KEYS[1], 0, -1)
local now = tonumber(ARGV[1])
local gap = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local played_too = ARGV[4] == "1"

local tracks = {}
local codes = {}
local excluded = {}
local seen = {}
local later = nil
for i = #raw, 1, -1 do
  local _, track, code, stamp = string.match(raw[i], "^([^|]*)|([^|]*)|(%a)|(.*)$")
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
  elseif (code == "s" or played_too) and not seen[track] then
    seen[track] = true
    excluded[#excluded + 1] = track
  end
end

local n = #tracks
for j = 1, math.floor(n / 2) do
  tracks[j], tracks[n - j + 1] = tracks[n - j + 1], tracks[j]
  codes[j], codes[n - j + 1] = codes[n - j + 1], codes[j]
end
return {table.concat(tracks, "|"), table.concat(codes), table.concat(excluded, "|")}
