-- BullMQ updateData-1.lua, after the lock check. ARGV[2] data JSON.
rcall("HSET", KEYS[1], "data", ARGV[2])
return 0
