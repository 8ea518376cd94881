-- Shared prefix of every bullpen script that writes job state.
-- KEYS[1] job key, KEYS[2] job lock key; ARGV[1] lock token, ARGV[2] the
-- write's sequence number in its attempt (1, 2, ...; 0 for a script that
-- only checks). Codes follow BullMQ: -1 job missing, -2 lock missing,
-- -6 lock mismatch; 0 when this write was already applied.
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
-- At most once: a client that timed out waiting for Redis sends a write
-- again, and a stopped server that wakes up runs every copy. The job hash
-- remembers the last sequence number applied for this lock token; a copy
-- of it, or of an older write arriving late, changes nothing. The script
-- after this prelude stores `seqMark` in the same HSET as its own field.
local seq = tonumber(ARGV[2])
local seqMark = nil
if seq > 0 then
  local last = rcall("HGET", KEYS[1], "bullpenSeq")
  if last then
    local token, n = string.match(last, "^(.*):(%d+)$")
    if token == ARGV[1] and tonumber(n) >= seq then return 0 end
  end
  seqMark = ARGV[1] .. ":" .. ARGV[2]
end
