-- Append a request's events to the global live event log, one stream entry each.
--
-- KEYS[1] - the stream (skiprec:stream:events)
-- KEYS[2] - its sequence counter ({skiprec:stream:events}:seq, the stream's slot)
-- ARGV[1] - events kept (XADD MAXLEN ~: one entry is one event)
-- ARGV[2], ... - the events as stream lines (skiprec.events.StoredEvent.stream_line)
-- return the sequence number of the last event appended
--
-- Every entry carries its sequence number "q" (1, 2, ... over the log's life): a
-- reader that remembers the last one it read can tell how many were trimmed before
-- it came back (service.event_log). An event may be logged more than once (a client
-- retry after a failure between the session and the log): readers drop repeated
-- (user, event id) pairs within the dedup window.
local maxlen = ARGV[1]
local count = #ARGV - 1
-- One INCRBY reserves the call's sequence numbers (the script is atomic).
local last = redis.pcall("INCRBY", KEYS[2], count)
if type(last) == "table" and last.err then
  -- a refusal at the first write, unwrapped (see append_events.lua)
  return redis.error_reply(string.match(last.err, "%-(%u+ .*)$") or last.err)
end
for i = 2, #ARGV do
  redis.call("XADD", KEYS[1], "MAXLEN", "~", maxlen, "*", "e", ARGV[i],
             "q", last - count + i - 1)
end
return last
