"""Faults on NATS JetStream, Redis and Kafka (the Kafka face of a ``tidings serve``) with real
servers of the test's own: the engine SIGKILLed and restarted under load loses nothing it
confirmed, and the deliveries a SIGKILLed consumer held go to another consumer (after the
consumer timeout; on Kafka, once the dead member's session lapses)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import tidings

from ..engines import EngineProcess, free_port
from ..serverproc import ServerProcess

pytestmark = pytest.mark.crash


class KafkaFace:
    """A ``tidings serve`` whose Kafka face is the engine, restarted on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.server = ServerProcess(directory / "data", "--kafka-port", str(self.port),
                                    "--http-port", "-1",
                                    "--kafka-group-initial-rebalance-delay-ms", "0")
        self.url = f"kafka://127.0.0.1:{self.port}"

    def start(self) -> KafkaFace:
        self.server.start()
        return self

    def kill(self) -> None:
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(params=["nats", "redis", "kafka"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineProcess]:
    proc: EngineProcess | KafkaFace = KafkaFace(tmp_path) if request.param == "kafka" else \
        EngineProcess(request.param, tmp_path / request.param)
    proc.start()
    yield proc  # type: ignore[misc]
    proc.stop()


async def _writing_through_restarts(engine: EngineProcess, write: Callable[[int], Awaitable[str]],
                                    kills: int) -> list[str]:
    """``write(i)`` without pause while the engine is SIGKILLed and restarted ``kills``
    times (the client reconnects by itself); the ids of the writes that returned."""
    confirmed: list[str] = []
    stop = asyncio.Event()

    async def writing() -> None:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(tidings.BrokenResourceError):
                confirmed.append(await write(i))
            i += 1

    task = asyncio.create_task(writing())
    for _ in range(kills):
        target = len(confirmed) + 100
        await _until(lambda t=target: len(confirmed) >= t, 60)
        engine.kill()
        await asyncio.sleep(0.5)
        engine.start()
    target = len(confirmed) + 100
    await _until(lambda: len(confirmed) >= target, 60)
    stop.set()
    await _finished(task)
    return confirmed


async def test_a_restarted_engine_keeps_every_confirmed_message(engine: EngineProcess) -> None:
    """A producer sends without pause while the engine is SIGKILLed and restarted twice: every
    send that returned is received (duplicates of a send whose confirmation was lost are
    allowed, losses are not)."""
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    received: set[str] = set()
    async with tidings.connect(engine.url) as producer, tidings.connect(engine.url) as consumer:
        await producer.declare_queue(queue)
        messages = consumer.receive(queue, prefetch=50)

        async def consume() -> None:
            async for message in messages:
                received.add(message.id or "")
                with contextlib.suppress(tidings.TidingsError):
                    await message.ack()

        consuming = asyncio.create_task(consume())
        confirmed = await _writing_through_restarts(
            engine, lambda i: producer.send(queue, {"i": i}), kills=2)
        await _until(lambda: set(confirmed) <= received, 60)
        await messages.aclose()  # ends the consumer's loop
        await _finished(consuming)
    assert len(confirmed) >= 300 and set(confirmed) <= received


async def test_a_restarted_engine_keeps_every_confirmed_append(engine: EngineProcess) -> None:
    """Appends to a stream go on while the engine is SIGKILLed and restarted: every append that
    returned is read back from the first record (a duplicate of one whose confirmation was
    lost is allowed)."""
    stream = f"log-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(engine.url) as client:
        await client.stream(stream)
        confirmed = await _writing_through_restarts(
            engine, lambda i: client.append(stream, {"i": i}), kills=1)
        read: set[str] = set()

        async def read_back() -> None:
            async with client.read(stream, start="first") as records:
                async for record in records:
                    read.add(record.id or "")
                    if set(confirmed) <= read:
                        return

        with contextlib.suppress(TimeoutError):  # (a lost append would wait for ever)
            await asyncio.wait_for(read_back(), 60)
    assert len(confirmed) >= 200 and set(confirmed) <= read, \
        f"{len(set(confirmed) - read)} confirmed appends lost"


HOLDER = """
import asyncio, sys, tidings

async def main():
    async with tidings.connect(sys.argv[1]) as client:
        async with client.receive(sys.argv[2], prefetch=5) as messages:
            held = 0
            async for message in messages:  # taken, never settled
                held += 1
                if held == 5:
                    print("holding", flush=True)
                    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_consumers_messages_go_to_another(engine: EngineProcess) -> None:
    queue = f"claim-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(engine.url) as client:
        await client.declare_queue(queue, consumer_timeout_ms=1500)
        ids = await client.send_many(queue, [{"n": n} for n in range(5)])
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, engine.url, queue],
                                  stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
            assert line == b"holding\n"
            assert await client.get(queue) is None  # all five are held
            time.sleep(2.5)  # well past the timeout: a live holder keeps renewing its leases
            assert await client.get(queue) is None, "a live consumer's delivery was taken"
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            message = await client.get(queue)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            # a pull request the dead holder left on the server may take one more ack wait
            # (Kafka counts nothing itself: the holder's commits said how far it had got)
            assert message.redelivered and message.delivery_count >= 1
            got.append(message.id)
            await message.ack()
        assert sorted(got) == sorted(ids)


async def _until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _finished(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` without cancelling it (a cancellation can be lost inside a client
    library's own timeout, and ``wait_for`` would then wait for ever)."""
    done, _ = await asyncio.wait([task], timeout=60)
    assert done, "the task did not finish"
    task.result()
