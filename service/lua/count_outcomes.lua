-- Count attributions once each, whichever worker or retry reports them.
--
-- KEYS[1] - the counters hash ({skiprec:outcomes}:counts): field -> count
-- KEYS[2] - the counted request ids ({skiprec:outcomes}:counted): id -> count time
-- ARGV[1] - now, unix seconds (the API's clock)
-- ARGV[2] - how long a counted request id is remembered, seconds (at least as
--           long as a retried event is recognised: the dedup TTL)
-- ARGV[3], ... - per attribution: its request id, the number n of counter fields,
--                then the n fields to increment by one
-- return how many attributions were counted (the others had been)
--
-- The increments are summed per field first: one HINCRBY per distinct field, not
-- per attribution (a batch of events answers many lists of the same arm).
local now = tonumber(ARGV[1])
local remember = tonumber(ARGV[2])
local counted = 0
local increments = {}
local fields = {} -- distinct fields, in first-seen order
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local added = redis.pcall("ZADD", KEYS[2], "NX", now, ARGV[i])
  if type(added) == "table" and added.err then
    -- a refusal at the first write, unwrapped (see append_events.lua)
    return redis.error_reply(string.match(added.err, "%-(%u+ .*)$") or added.err)
  end
  if added == 1 then
    for j = i + 2, i + 1 + n do
      local name = ARGV[j]
      if not increments[name] then
        increments[name] = 0
        fields[#fields + 1] = name
      end
      increments[name] = increments[name] + 1
    end
    counted = counted + 1
  end
  i = i + 2 + n
end
for _, name in ipairs(fields) do
  redis.call("HINCRBY", KEYS[1], name, increments[name])
end
if counted > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. (now - remember))
end
return counted
