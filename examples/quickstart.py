"""A job queue and an event bus in one embedded, durable broker (a directory on disk).

    python examples/quickstart.py [DATA_DIR]
"""

from __future__ import annotations

import asyncio
import sys

import tidings


async def main(data_dir: str) -> None:
    async with tidings.connect(data_dir) as client:
        # Queues: a producer sends jobs; a consumer receives and acknowledges them.
        for n in range(3):
            await client.send("emails", {"to": f"user{n}@example.com"})  # durable on return
        while (job := await client.get("emails")) is not None:
            print("sending mail to", job.json()["to"])
            await job.ack()  # gone for good; without an ack it would come back

        # Events: handlers subscribe by pattern; each group gets every event once.
        handled = asyncio.Event()

        @client.use
        async def log_events(event: tidings.ReceivedMessage, call_next):  # type: ignore[no-untyped-def]
            print(f"received event {event.topic} id={event.id}")
            return await call_next(event)

        @client.subscribe("orders.*", group="billing")
        async def bill(event: tidings.ReceivedMessage) -> None:
            print("billing order", event.json()["order"])
            handled.set()

        await client.start()
        await client.publish("orders.created", {"order": 42})
        await asyncio.wait_for(handled.wait(), timeout=10)

        stats = (await client.statistics()).queue("emails")
        print(f"emails: {stats.counts['acked']} acked, "
              f"waiting time p50 {stats.waiting_time.p50_ms:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./tidings-data"))
