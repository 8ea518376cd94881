-- BullMQ updateData-1.lua, after the lock check. ARGV[3] data JSON.
rcall("HSET", KEYS[1], "data", ARGV[3])
return 0
