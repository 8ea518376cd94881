-- BullMQ addLog-2.lua, after the lock check, for one or more lines.
-- KEYS[3] job logs list; ARGV[2] keepLogs or '', ARGV[3..] lines.
local logCount = 0
for i = 3, #ARGV do
  logCount = rcall("RPUSH", KEYS[3], ARGV[i])
end
if ARGV[2] ~= '' then
  local keepLogs = tonumber(ARGV[2])
  rcall("LTRIM", KEYS[3], -keepLogs, -1)
  return math.min(keepLogs, logCount)
end
return logCount
