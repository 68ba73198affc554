"""Child process for the state machine crash tests: runs the order machine on a data directory
(or over ``amqp://`` to tidings serve) while it submits orders and pays two of every three,
logging each event once it is confirmed durable (``S key`` submitted, ``P key`` paid), until it
is killed with SIGKILL. Unpaid orders have a payment timer of 0.2 s; paid ones an hour."""

from __future__ import annotations

import asyncio
import os
import sys

import tidings
from tests.client.order_machine import order_machine


async def main(data_dir: str, log_path: str, run: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with tidings.connect(data_dir) as client:
        runner = client.machine(order_machine())
        await runner.start()
        print("ready", flush=True)

        async def order(key: str, paid: bool) -> None:
            await client.publish("orders.submitted", {
                "order_id": key, "amount": 1, "pay_within_s": 3600 if paid else 0.2},
                message_id=f"s-{key}")
            os.write(fd, f"S {key}\n".encode())
            if paid:
                await client.publish("orders.paid", {"order_id": key, "amount": 1},
                                     message_id=f"p-{key}")
                os.write(fd, f"P {key}\n".encode())

        i = 0
        while True:  # five orders at a time, two of every three paid
            await asyncio.gather(*(order(f"o{run}-{i + k}", (i + k) % 3 != 0)
                                   for k in range(5)))
            i += 5


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
