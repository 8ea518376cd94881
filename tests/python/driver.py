"""The Python side of bullpen's interop tests: the real `bullmq` PyPI package.

    python driver.py add <redis-url> <queue> '[{"name": .., "data": .., "opts": ..}]'

prints the new job ids as JSON.
"""
import asyncio
import json
import sys

from bullmq import Queue


async def main() -> None:
    cmd, url, queue_name = sys.argv[1:4]
    if cmd != "add":
        raise SystemExit(f"unknown command {cmd}")
    queue = Queue(queue_name, {"connection": url})
    ids = []
    for j in json.loads(sys.argv[4]):
        job = await queue.add(j["name"], j["data"], j.get("opts") or {})
        ids.append(job.id)
    await queue.close()
    print(json.dumps(ids))


asyncio.run(main())
