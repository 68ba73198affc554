"""The app the worker tests run: a task that logs each call it finished (one line, O_APPEND),
a slow one, and a subscription whose group is given by the environment."""

from __future__ import annotations

import asyncio
import os

import tidings

client = tidings.connect(os.environ["WORKAPP_URL"])
QUEUE = os.environ.get("WORKAPP_QUEUE", "work")


def _log(line: str) -> None:
    fd = os.open(os.environ["WORKAPP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{line}\n".encode())
    os.close(fd)


@client.task(queue=QUEUE, retries=2, min_backoff_ms=50)
async def work(i: int) -> int:
    await asyncio.sleep(0.01)
    _log(f"W {i} {os.getpid()}")
    return i * 2


@client.subscribe(os.environ.get("WORKAPP_TOPIC", "workapp.*"), group="billing",
                  min_backoff_ms=50)
async def bill(event: tidings.ReceivedMessage) -> None:
    _log(f"E {event.json()['n']} {os.getpid()}")
