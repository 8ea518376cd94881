-- A failed attempt's stack, after the lock check: what Node's
-- Job.moveToFailed writes with the failure (updateStacktrace: push
-- err.stack, keep the last opts.stackTraceLimit entries, store the array
-- as JSON). ARGV[3] the stack text, ARGV[4] stackTraceLimit or ''.
local stacktrace = {}
local stored = rcall("HGET", KEYS[1], "stacktrace")
if stored then
  local ok, list = pcall(cjson.decode, stored)
  if ok and type(list) == "table" then stacktrace = list end
end
table.insert(stacktrace, ARGV[3])
if ARGV[4] ~= '' then
  local limit = tonumber(ARGV[4])
  while #stacktrace > limit do table.remove(stacktrace, 1) end
end
-- cjson writes an empty table as an object; Node reads an array.
local json = #stacktrace == 0 and "[]" or cjson.encode(stacktrace)
if seqMark then
  rcall("HSET", KEYS[1], "stacktrace", json, "bullpenSeq", seqMark)
else
  rcall("HSET", KEYS[1], "stacktrace", json)
end
return 0
