"""A state machine run by ``tidings worker --processes 2`` over four partitions: the
instances spread over both processes, each instance's events are applied by one of them in
order, and every transition is committed once (on a shared data directory and on tidings
serve)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import tidings
from tidings.transitions import read_row

from ..serverproc import ServerProcess
from .test_worker import _until_async

HERE = Path(__file__).parent
JOBS = 120


@pytest.mark.parametrize("place", ["shared directory", "tidings serve"])
async def test_two_worker_processes_share_a_machine_by_partition(
        tmp_path: Path, place: str) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start() if place == "tidings serve" else None
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/" if server else str(data)
    try:
        options = {"management_url": f"http://guest:guest@127.0.0.1:{server.http_port}"} \
            if server else {}
        async with tidings.connect(url, **options) as client:  # (the directory's owner)
            await client.declare_queue("finished")
            env = {**os.environ, "MACHINEAPP_URL": url,
                   "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
            worker = subprocess.Popen(
                [sys.executable, "-m", "tidings", "worker", "machineapp:client",
                 "--processes", "2"], env=env, cwd=HERE, stderr=subprocess.PIPE)
            try:
                async def both_consume() -> bool:
                    stats = await client.statistics()
                    return all(q.name not in {f"machine.job.p{i}" for i in range(4)}
                               or q.consumers == 2 for q in stats.queues) and \
                        any(q.name == "machine.job.p3" for q in stats.queues)

                await _until_async(both_consume, 60)
                await asyncio.gather(*(client.publish("jobs.started", {"job_id": f"j{i}"})
                                       for i in range(JOBS)))
                await asyncio.gather(*(client.publish("jobs.finished", {"job_id": f"j{i}"})
                                       for i in range(JOBS)))
                done: list[dict[str, object]] = []

                async def all_finished() -> bool:
                    while (m := await client.get("finished")) is not None:
                        done.append(m.json())
                        await m.ack()
                    return len(done) >= JOBS

                await _until_async(all_finished, 60)
            finally:
                worker.send_signal(signal.SIGTERM)
                # (in a thread: the workers reach the directory through this loop)
                _, err = await asyncio.to_thread(worker.communicate, timeout=60)
            assert worker.returncode == 0, err.decode()[-2000:]
            assert Counter(str(d["job_id"]) for d in done) == {f"j{i}": 1 for i in range(JOBS)}
            # one process per instance (its partition's), and both processes had some
            assert all(d["started_by"] == d["finished_by"] for d in done)
            per_process = Counter(d["finished_by"] for d in done)
            assert len(per_process) == 2 and min(per_process.values()) >= JOBS // 8, per_process
            rows = await client.transport.list_instances("job")
            assert len(rows) == JOBS and {read_row(r)["state"] for _, r in rows} == {"done"}
    finally:
        if server is not None:
            server.stop()
