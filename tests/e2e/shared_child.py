"""Child process of the shared-directory test: one of several processes on one data directory.

It sends ``count`` messages to ``shared`` in bursts of ``burst`` sent at once (logging
``C id`` once each send is confirmed) while
receiving and acknowledging messages of the same queue (logging ``R id`` on receipt), until
it has sent everything and nothing has arrived for ``idle_s`` seconds. The parent kills some
of these processes with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sys

import tidings


async def main(data_dir: str, log_path: str, count: int, idle_s: float, burst: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    async with tidings.connect(data_dir) as client:
        transport = client.transport
        role = type(getattr(transport, "inner", transport)).__name__
        log(f"S {os.getpid()} {role}")
        last = asyncio.get_running_loop().time()

        async def receive() -> None:
            nonlocal last
            async with client.receive("shared", prefetch=20) as messages:
                async for message in messages:
                    log(f"R {message.id}")
                    await message.ack()
                    last = asyncio.get_running_loop().time()

        async def send(i: int) -> None:
            mid = f"{os.getpid()}-{i}"
            await client.send("shared", {"i": i}, message_id=mid)
            log(f"C {mid}")

        receiving = asyncio.create_task(receive())
        for start in range(0, count, burst):  # a burst's sends travel as one batch
            await asyncio.gather(*(send(i) for i in range(start, min(start + burst, count))))
            await asyncio.sleep(0.002 * burst)
        while asyncio.get_running_loop().time() - last < idle_s:
            await asyncio.sleep(0.1)
        receiving.cancel()
        log(f"E {os.getpid()}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                     int(sys.argv[5])))
