#!/usr/bin/env python3
"""Redis CPU of bullpen's write-behind flush script, with and without the
write sequence number (issue 24), measured by Redis itself (INFO
commandstats usec_per_call) on a redis-server you start:

    redis-server --port 7393 --save '' &
    tests/python/.venv/bin/python bench/flush_cost.py 7393
"""
import pathlib
import sys

import redis

port = int(sys.argv[1]) if len(sys.argv) > 1 else 6379
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
lua_dir = pathlib.Path(__file__).resolve().parent.parent / "runtime/src/host/lua"
r = redis.Redis(port=port)
sha = r.script_load((lua_dir / "check_lock.lua").read_text() + "\n" + (lua_dir / "flush.lua").read_text())


def run(seq, n=20000):
    r.flushall()
    p = r.pipeline(transaction=False)
    for i in range(n):
        p.hset(f"bull:q:{i}", "data", "{}")
        p.set(f"bull:q:{i}:lock", "tok")
    p.execute()
    r.config_resetstat()
    for i in range(n):
        job = f"bull:q:{i}"
        # What a short job's flush sends: the digest line, one log line, one progress value.
        p.evalsha(sha, 5, job, job + ":lock", job + ":logs", "bull:q:events", "bull:q:meta",
                  "tok", seq, "", str(i), "2", "bullpen: plugin sha256:abc", "echo: job", "100")
        if i % 1000 == 999:
            p.execute()
    p.execute()
    return r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]


for _ in range(rounds):
    print(f"usec per flush: without the sequence number {run('0'):.2f}, with it {run('1'):.2f}")
r.flushall()
