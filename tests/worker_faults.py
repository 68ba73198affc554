"""The worker faults, end to end against a real ``tidings serve`` and ``tidings worker``: a task
that exits its process, one that never returns, and the broker going down under the worker.
Returns what happened; ``python bench/reliability.py worker`` runs it for several rounds (the
test suite checks each fault on its own in ``tests/worker/test_faults.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tidings.client.tasks import TaskError

from .serverproc import ServerProcess

APP_DIR = Path(__file__).resolve().parent / "worker"


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAULTAPP_URL": url,
           "PYTHONPATH": os.pathsep.join([str(APP_DIR), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "tidings", "worker", "faultapp:client",
                                 "--max-stuck-threads", "2"], env=env, cwd=APP_DIR,
                                stderr=err)


async def _outcome(call: Any, timeout_s: float = 90) -> str:
    try:
        value = await (await call).result(timeout_s=timeout_s)
    except TaskError as e:
        return e.remote_type
    except Exception as e:
        return type(e).__name__
    return f"value {value}"


async def worker_faults(work: Path, rounds: int = 1) -> dict[str, Any]:
    server = ServerProcess(work / "data").start()
    port = server.port
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    log = work / "worker.log"
    worker = _worker(url, log)
    sys.path.insert(0, str(APP_DIR))
    os.environ["FAULTAPP_URL"] = url
    try:
        import faultapp  # the worker's own definitions, to send calls with
    finally:
        sys.path.remove(str(APP_DIR))
    out: dict[str, Any] = {"rounds": rounds, "task that exits its process": [],
                           "task that never returns": [], "after the broker was down 5 s": []}
    try:
        async with faultapp.client:
            for _ in range(rounds):
                out["task that exits its process"].append(await _outcome(faultapp.die.send()))
                out["task that never returns"].append(await _outcome(faultapp.hang.send()))
                server.stop(signal.SIGKILL)
                await asyncio.sleep(5)
                server.start(port)
                started = time.monotonic()
                out["after the broker was down 5 s"].append(
                    f"{await _outcome(faultapp.add.send(2, 3))} in "
                    f"{time.monotonic() - started:.1f} s")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        server.stop()
    text = log.read_text()
    out["worker exit code"] = worker.returncode
    out["worker processes replaced (stuck threads)"] = text.count("asked to be replaced")
    out["worker processes restarted after a crash"] = text.count("restarting in")
    out["worker log lines"] = len(text.splitlines())
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d )", text)  # one log record each
    out["tracebacks in worker log"] = sum(  # (a final task failure comes with its own)
        "Traceback" in r for r in records if "failed for good" not in r)
    out["tracebacks in server log"] = server.log.read_text().count("Traceback")
    return out
