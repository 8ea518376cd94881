-- Shared prefix of every bullpen script that writes job state.
-- KEYS[1] job key, KEYS[2] job lock key; ARGV[1] lock token.
-- Codes follow BullMQ: -1 job missing, -2 lock missing, -6 lock mismatch.
local rcall = redis.call
local function checkLock()
  if rcall("EXISTS", KEYS[1]) ~= 1 then return -1 end
  local lock = rcall("GET", KEYS[2])
  if not lock then return -2 end
  if lock ~= ARGV[1] then return -6 end
  return 0
end
local code = checkLock()
if code ~= 0 then return code end
