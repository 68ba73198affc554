"""The amqp:// client through a broker crash: tidings serve is SIGKILLed mid-traffic and
restarted on the same port; the client reconnects, its consumer resumes, every send that
returned is received (at least once), and none of the sends raised."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import tidings

from ..serverproc import ServerProcess


async def test_sends_and_a_consumer_survive_a_killed_and_restarted_server(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    port = server.port
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    received: set[str] = set()
    sent: list[str] = []
    try:
        async with tidings.connect(url) as client:
            await client.declare_queue("survive")

            async def consume() -> None:
                async with client.receive("survive", prefetch=20) as messages:
                    async for message in messages:
                        received.add(message.id or "")
                        await message.ack()

            consumer = asyncio.create_task(consume())

            async def restart_midway() -> None:
                while len(sent) < 100:
                    await asyncio.sleep(0.01)
                server.stop(signal.SIGKILL)
                await asyncio.sleep(0.5)
                server.start(port)

            restarting = asyncio.create_task(restart_midway())
            for i in range(300):
                sent.append(await client.send("survive", {"i": i}, message_id=f"m{i}"))
                await asyncio.sleep(0.002)
            await restarting
            deadline = asyncio.get_running_loop().time() + 30
            while set(sent) - received and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            consumer.cancel()
            assert set(sent) - received == set(), "sends that returned were lost"
            assert client.transport.reconnects >= 1  # type: ignore[attr-defined]
    finally:
        server.stop()


async def test_a_result_and_a_reply_survive_a_server_restart_during_the_call(
        tmp_path: Path) -> None:
    """tidings serve restarts while a task and a handler run: the caller reconnects, and its
    pending result() and request() still get their answers (the calls used to carry the old
    private reply queue's name, and timed out)."""
    server = ServerProcess(tmp_path / "data").start()
    port = server.port
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    worker, caller = tidings.connect(url), tidings.connect(url)
    started = asyncio.Event()

    @worker.task(queue="slow-tasks")
    async def slow(x: int) -> int:
        started.set()
        await asyncio.sleep(1.5)
        return x * 2

    @worker.handler("slow-requests")
    async def answer(message: tidings.ReceivedMessage) -> dict[str, int]:
        started.set()
        await asyncio.sleep(1.5)
        return {"got": message.json()["n"]}

    try:
        async with worker, caller:
            await worker.start()
            caller_slow = caller.task(slow.function, queue="slow-tasks", name=slow.name)
            handle = await caller_slow.send(21)
            asking = asyncio.create_task(caller.request("slow-requests", {"n": 7},
                                                        timeout_s=60))
            await asyncio.wait_for(started.wait(), 30)
            server.stop(signal.SIGKILL)
            await asyncio.sleep(0.3)
            server.start(port)
            assert await handle.result(timeout_s=60) == 42
            assert await asking == {"got": 7}
            assert caller.transport.reconnects >= 1  # type: ignore[attr-defined]
    finally:
        server.stop()
