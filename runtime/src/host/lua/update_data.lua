-- BullMQ updateData-1.lua, after the lock check. ARGV[3] data JSON.
if seqMark then
  rcall("HSET", KEYS[1], "data", ARGV[3], "bullpenSeq", seqMark)
else
  rcall("HSET", KEYS[1], "data", ARGV[3])
end
return 0
