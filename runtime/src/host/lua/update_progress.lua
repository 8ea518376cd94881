-- BullMQ updateProgress-3.lua, after the lock check.
-- KEYS[3] events stream, KEYS[4] meta; ARGV[2] job id, ARGV[3] progress JSON.
local maxEvents = rcall("HGET", KEYS[4], "opts.maxLenEvents")
if not maxEvents then
  maxEvents = 10000
  rcall("HSET", KEYS[4], "opts.maxLenEvents", maxEvents)
end
rcall("HSET", KEYS[1], "progress", ARGV[3])
rcall("XADD", KEYS[3], "MAXLEN", "~", maxEvents, "*", "event", "progress",
      "jobId", ARGV[2], "data", ARGV[3])
return 0
