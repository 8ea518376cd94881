-- bullpen's write-behind flush, after the lock check: BullMQ's addLog-2.lua
-- for each log line, then BullMQ's updateProgress-3.lua for each progress
-- value, in the order the guest made the calls (one script instead of one
-- per call; what clients read and the events they get are the same).
-- KEYS[3] job logs list, KEYS[4] events stream, KEYS[5] meta.
-- ARGV[3] keepLogs or '', ARGV[4] job id, ARGV[5] number of log lines n,
-- ARGV[6 .. 5+n] log lines, ARGV[6+n ..] progress values (JSON).
local n = tonumber(ARGV[5])
local logCount = 0
-- One RPUSH per 1000 lines, not per line (each call costs Redis ~2 µs;
-- unpack's share of Lua's C stack bounds a batch).
for i = 6, 5 + n, 1000 do
  logCount = rcall("RPUSH", KEYS[3], unpack(ARGV, i, math.min(i + 999, 5 + n)))
end
if n > 0 and ARGV[3] ~= '' then
  local keepLogs = tonumber(ARGV[3])
  rcall("LTRIM", KEYS[3], -keepLogs, -1)
  logCount = math.min(keepLogs, logCount)
end
if #ARGV > 5 + n then
  local maxEvents = rcall("HGET", KEYS[5], "opts.maxLenEvents")
  if not maxEvents then
    maxEvents = 10000
    rcall("HSET", KEYS[5], "opts.maxLenEvents", maxEvents)
  end
  if seqMark then
    rcall("HSET", KEYS[1], "progress", ARGV[#ARGV], "bullpenSeq", seqMark)
    seqMark = nil
  else
    rcall("HSET", KEYS[1], "progress", ARGV[#ARGV])
  end
  for i = 6 + n, #ARGV do
    rcall("XADD", KEYS[4], "MAXLEN", "~", maxEvents, "*", "event", "progress",
          "jobId", ARGV[4], "data", ARGV[i])
  end
end
if seqMark then rcall("HSET", KEYS[1], "bullpenSeq", seqMark) end
return logCount
