"""Several processes share one data directory with no server: the owner is SIGKILLed while
three others send (one by one, and in bursts that travel as batches) and receive; one of them
takes over and nothing confirmed is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tidings

CHILD = Path(__file__).with_name("shared_child.py")


def _start(data: Path, log: Path, count: int, idle_s: float,
           burst: int = 1) -> subprocess.Popen[bytes]:
    with open(log.with_suffix(".err"), "ab") as err:
        return subprocess.Popen([sys.executable, str(CHILD), str(data), str(log), str(count),
                                 str(idle_s), str(burst)],
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=err)


def _wait_for(path: Path, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {path} in time")


@pytest.mark.crash
async def test_owner_killed_while_three_processes_send_and_receive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    owner_log = tmp_path / "owner.log"
    owner = _start(data, owner_log, 100_000, 30)
    _wait_for(owner_log, "OwnerTransport")
    logs = [tmp_path / f"p{i}.log" for i in range(3)]
    # one sends one by one, two in bursts (which travel to the owner as batches)
    others = [_start(data, log, 300, 2.0, burst) for log, burst in zip(logs, (1, 10, 25),
                                                                           strict=True)]
    for log in logs:
        _wait_for(log, "AmqpTransport")
    _wait_for(logs[0], "C ", 20)
    time.sleep(random.uniform(0.2, 0.8))
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    for proc in others:
        assert proc.wait(timeout=120) == 0, proc.args
    lines = [line.split() for log in [owner_log, *logs] for line in log.read_text().splitlines()]
    confirmed = {p[1] for p in lines if p[0] == "C"}
    received = {p[1] for p in lines if p[0] == "R"}
    owners_after = [p for p in lines if p[0] == "S" and p[2] == "OwnerTransport"]
    assert len(owners_after) == 1, "the first owner only: the others reconnected, one took over"
    async with tidings.connect(str(data)) as client:  # what is still waiting
        while (message := await client.get("shared")) is not None:
            received.add(message.id or "")
            await message.ack()
    assert confirmed - received == set(), f"{len(confirmed - received)} confirmed lost"
    assert len([c for c in confirmed if not c.startswith(str(owner.pid))]) == 900
    handover = [e for log in logs for e in log.read_text().splitlines() if e.startswith("E")]
    assert len(handover) == 3
