"""Child process for the crash tests: produces and consumes on one data directory, logging
what it knows to be durable, until it is killed with SIGKILL.

The queue is a priority queue, and some sends are delayed a little (they reach the queue
within the run or after a restart); others are delayed an hour into ``later`` (they sit in a
far due-time bucket on disk).

Log lines (one write each, O_APPEND): ``C id`` after a send was confirmed durable, ``R id r``
when a message was received (r = redelivered 0/1), ``A id`` after its ack was made durable,
``F id`` after a send delayed an hour was confirmed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import tidings


async def main(data_dir: str, log_path: str, run: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    async with tidings.connect(data_dir) as client:
        await client.declare_queue("crash", delivery_limit=None, dead_letters=False,
                                   max_priority=5)
        await client.declare_queue("later", delivery_limit=None, dead_letters=False)
        print("ready", flush=True)

        async def produce() -> None:
            i = 0
            while True:
                ids = [f"r{run}-{i + k}" for k in range(random.randint(1, 30))]
                i += len(ids)

                async def one(mid: str) -> None:
                    if random.random() < 0.03:
                        await client.send("later", b"f" * 256, message_id=mid,
                                          delay_ms=3_600_000)
                        log(f"F {mid}")
                        return
                    delay = random.randint(1, 100) if random.random() < 0.1 else None
                    await client.send("crash", b"x" * 256, message_id=mid, delay_ms=delay,
                                      priority=random.randint(0, 7))
                    log(f"C {mid}")

                await asyncio.gather(*(one(mid) for mid in ids))

        async def consume() -> None:
            pending: list[str] = []
            async with client.receive("crash", prefetch=50) as messages:
                async for message in messages:
                    log(f"R {message.id} {int(message.redelivered)}")
                    if random.random() < 0.05:
                        await message.nack(requeue=True)
                        continue
                    await message.ack()
                    pending.append(message.id or "")
                    if len(pending) >= random.randint(1, 20):
                        await client.sync()
                        for mid in pending:
                            log(f"A {mid}")
                        pending.clear()

        await asyncio.gather(produce(), consume())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
