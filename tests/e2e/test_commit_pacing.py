"""Commit pacing under kill -9: writes nobody waits for (acks) join a later commit, but never
later than ``PACE_S``; confirmed messages are durable whenever the process dies."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tidings.routing.broker import Broker
from tidings.storage import SqliteStore
from tidings.storage.sqlite import PACE_S

CHILD = textwrap.dedent("""
    import asyncio, sys
    import tidings

    async def main(data_dir, total):
        async with tidings.connect(data_dir) as client:
            await client.declare_queue("paced", delivery_limit=None, dead_letters=False)
            await client.send_many("paced", [f"m{i}".encode() for i in range(total)])
            print("confirmed", flush=True)
            got = 0
            async with client.receive("paced", prefetch=total) as messages:
                async for message in messages:
                    await message.ack()  # not awaited to durability: paced
                    got += 1
                    if got == total:
                        break
            print("acked", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def run_child(data_dir: Path, total: int, kill_after_ack_s: float) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(total)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert child.stdout is not None
    said = []
    try:
        for line in child.stdout:
            said.append(line.decode().strip())
            if said[-1] == "acked":
                break
        time.sleep(kill_after_ack_s)
        child.kill()
    finally:
        child.wait()
        child.stdout.close()
        assert child.stderr is not None
        err = child.stderr.read().decode()
        child.stderr.close()
    assert said[-1:] == ["acked"], f"child stopped early: {said} {err}"
    return err


async def remaining(data_dir: Path) -> list[bytes]:
    broker = Broker(SqliteStore(data_dir))
    broker.start()
    session = broker.open_session()
    left = []
    while (d := broker.get(session, "paced")) is not None:
        left.append(d.message.body)
    broker.close()
    return left


@pytest.mark.crash
async def test_unawaited_acks_are_committed_within_the_pace(tmp_path: Path) -> None:
    """Killed well after PACE_S, every ack is in the store, though nobody waited for it."""
    for run in range(3):
        data_dir = tmp_path / f"late{run}"
        run_child(data_dir, 200, 0.25)  # fifty times PACE_S
        assert await remaining(data_dir) == []


@pytest.mark.crash
async def test_kill_9_inside_the_pace_loses_no_confirmed_message(tmp_path: Path) -> None:
    """Killed at once: acks may not have landed (the messages come back, as after any crash
    before an ack is durable), but every confirmed message is either acked or still there,
    and none is there twice."""
    rng = random.Random()
    for run in range(6):
        data_dir = tmp_path / f"early{run}"
        total = 300
        run_child(data_dir, total, rng.uniform(0, PACE_S))
        left = await remaining(data_dir)
        assert len(left) == len(set(left)), "a message is stored twice"
        assert set(left) <= {f"m{i}".encode() for i in range(total)}
