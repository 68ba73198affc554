"""Kill -9 a process running a state machine at random moments while events pour in; then let
a new process finish the work and check: every confirmed order exists, each committed exactly
the transitions its events asked for (version = transitions = events applied), a paid order
sent exactly one shipping message, an unpaid one was cancelled once by its timer, and no
order was both."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import tidings
from tests.client.order_machine import order_machine

from ..serverproc import ServerProcess
from .test_crash import run_and_kill

CHILD = Path(__file__).with_name("machine_child.py")
KILLS = int(os.environ.get("TIDINGS_CRASH_KILLS", "12"))


@pytest.mark.crash
async def test_kill_9_never_loses_nor_repeats_a_transition(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("TIDINGS_CRASH_SEED", str(time.time_ns())))
    data_dir, log = tmp_path / "data", tmp_path / "log"
    for run in range(KILLS):
        run_and_kill(data_dir, log, run, rng, CHILD)
    await _check(data_dir, log)


@pytest.mark.crash
async def test_kill_9_of_tidings_serve_never_loses_nor_repeats_a_transition(
        tmp_path: Path) -> None:
    """The machine runs in a client of tidings serve; the server is killed with -9 under it
    (every other round the client first), and started again on the same directory."""
    rng = random.Random(os.environ.get("TIDINGS_CRASH_SEED", str(time.time_ns())))
    data_dir, log = tmp_path / "data", tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for run in range(KILLS):
        server = ServerProcess(data_dir).start()
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
        child = subprocess.Popen([sys.executable, str(CHILD), url, str(log), str(run)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"ready", "the child did not start"
            time.sleep(rng.uniform(0.05, 0.6))
            if run % 2 == 0:
                server.kill()
                time.sleep(0.1)
            child.kill()
        finally:
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
            server.kill()
    await _check(data_dir, log)


async def _check(data_dir: Path, log: Path) -> None:
    """Finish the work on the directory, then: no confirmed order lost, no transition twice,
    one shipping message per paid order, one timer cancellation per unpaid one."""
    submitted, paid = set(), set()
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            (submitted if parts[0] == "S" else paid).add(parts[1])
    assert len(submitted) > 20, "the child never got going"
    async with tidings.connect(str(data_dir)) as client:
        runner = client.machine(order_machine())
        await runner.start()
        deadline = time.monotonic() + 30
        while True:  # every event left taken, every short payment timer fallen due
            stats = (await client.statistics()).queue("machine.order")
            found = await runner.list()
            if stats.ready == stats.unacked == 0 and all(
                    o.state == "cancelled" for o in found if not _pays(o.key)):
                break
            assert time.monotonic() < deadline, (stats, [o for o in found if not _pays(o.key)
                                                         and o.state != "cancelled"][:3])
            await asyncio.sleep(0.1)
        orders = {i.key: i for i in await runner.list()}
        shipped: Counter[str] = Counter()
        while (m := await client.get("shipping")) is not None:
            shipped[m.json()["order_id"]] += 1
            await m.ack()
        dead = await client.dead_letters("machine.order")
        await runner.stop()
    assert submitted <= set(orders), "a confirmed order was lost"
    for key, order in orders.items():
        assert order.version == order.history == len(order.seen), key
        if not _pays(key):  # its 0.2 s timer fired once: cancelled, nothing shipped
            assert (order.state, order.history, shipped[key]) == ("cancelled", 2, 0), key
        elif order.state == "paid":
            assert order.history == 2 and shipped[key] == 1, (key, shipped[key])
        else:  # killed before its payment was sent: it waits (an hour) for it
            assert order.state == "submitted" and key not in paid and not shipped[key], key
    assert paid <= {k for k, o in orders.items() if o.state == "paid"}
    assert all(count == 1 for count in shipped.values()), "a transition sent twice"
    assert not dead, [d.headers for d in dead]


def _pays(key: str) -> bool:
    """Whether the child paid this order (two of every three: ``o{run}-{i}``, i % 3 != 0)."""
    return int(key.rsplit("-", 1)[1]) % 3 != 0
