"""Kill -9 a real process at random moments while it publishes with confirms and consumes
with acks; then check what survived.

- every confirmed message is still there, or was received (and so possibly acked);
- no message whose ack was durable is ever delivered again;
- a message is delivered twice only if its first delivery was not acknowledged durably.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tidings.routing.broker import Broker
from tidings.storage import SqliteStore, key_admin
from tidings.storage.keys import KEY_ENV

CHILD = Path(__file__).with_name("crash_child.py")
#: Kills per test run (the issue asks for at least 20 in the default run).
KILLS = int(os.environ.get("TIDINGS_CRASH_KILLS", "24"))


def run_and_kill(data_dir: Path, log: Path, run: int, rng: random.Random,
                 child_script: Path = CHILD) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, str(child_script), str(data_dir), str(log),
                              str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != b"ready":
            err = child.stderr.read().decode() if child.stderr else ""
            raise AssertionError(f"child did not start: {line!r} {err}")
        time.sleep(rng.uniform(0.02, 0.6))
        child.kill()
    finally:
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -9, f"child ended on its own: {child.returncode}"


def parse(log: Path) -> tuple[set[str], dict[str, list[int]], dict[str, int], set[str]]:
    """Confirmed ids, where each id was received, where each id's ack was durable, and the
    confirmed ids of messages delayed an hour."""
    confirmed: set[str] = set()
    far: set[str] = set()
    received: dict[str, list[int]] = defaultdict(list)
    acked: dict[str, int] = {}
    for position, raw in enumerate(log.read_text().splitlines()):
        parts = raw.split()
        if len(parts) < 2:
            continue  # a line torn by the kill
        if parts[0] == "C":
            confirmed.add(parts[1])
        elif parts[0] == "R" and len(parts) == 3:
            received[parts[1]].append(position)
        elif parts[0] == "A":
            acked[parts[1]] = position
        elif parts[0] == "F":
            far.add(parts[1])
    return confirmed, received, acked, far


@pytest.mark.crash
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_kill_9_loses_no_confirmed_message_and_undoes_no_durable_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool,
) -> None:
    """(Encrypted: the children and the check run with a keyring, so every record written
    under the kills is sealed and must open again.)"""
    rng = random.Random(os.environ.get("TIDINGS_CRASH_SEED", str(time.time_ns())))
    data_dir, log = tmp_path / "data", tmp_path / "log"
    if encrypted:
        monkeypatch.setenv(KEY_ENV, "crash:" + base64.b64encode(b"k" * 32).decode())
    for run in range(KILLS // 2 if encrypted else KILLS):
        run_and_kill(data_dir, log, run, rng)

    confirmed, received, acked, far = parse(log)
    assert len(confirmed) > KILLS // 2, "the children confirmed too little to prove anything"
    if encrypted:  # every record the children wrote is sealed
        written = key_admin.status(data_dir).messages
        assert None not in written and sum(written.values()) > 0, written

    broker = Broker(SqliteStore(data_dir))
    assert (broker.store.sealer is not None) == encrypted
    broker.start()
    await asyncio.sleep(0.3)  # messages delayed a little fall due
    waiting = [r.message.message_id for _, r in broker.delayed.entries()]
    assert len(waiting) == len(set(waiting)), "a delayed message is stored twice"
    assert far <= set(waiting), f"delayed messages lost: {sorted(far - set(waiting))[:5]}"
    session = broker.open_session()
    remaining: list[str] = []
    while (d := broker.get(session, "crash")) is not None:
        remaining.append(d.message.message_id or "")
        session.ack(d.delivery_tag)
    await broker.sync()
    broker.close()

    left = set(remaining)
    assert len(left) == len(remaining), "a message is stored twice"
    lost = {mid for mid in confirmed if mid not in left and mid not in received}
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    undone = set(acked) & left
    assert not undone, f"durably acked messages came back: {sorted(undone)[:5]}"
    for mid, ack_at in acked.items():
        later = [p for p in received[mid] if p > ack_at]
        assert not later, f"message {mid} delivered again after its ack was durable"
    print(f"{KILLS} kills: {len(confirmed)} confirmed, {len(acked)} acks durable, "
          f"{len(left)} left, {sum(len(v) > 1 for v in received.values())} redelivered, "
          f"{len(far)} delayed an hour still waiting")
