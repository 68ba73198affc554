"""Worker faults that must not wedge, loop or lose a result: a task that kills its process,
tasks that overrun their time limit, results that are not JSON, a task that raises
CancelledError, a worker that cannot run, an unreachable broker."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tidings
from tidings.client.tasks import TaskError

from ..serverproc import ServerProcess

HERE = Path(__file__).parent


def _worker(url: str, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FAULTAPP_URL": url, "PYTHONPATH": str(HERE)}
    return subprocess.Popen([sys.executable, "-m", "tidings", "worker", "faultapp:client",
                             *flags], env=env, cwd=HERE, stderr=subprocess.PIPE, text=True)


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.terminate()
    try:
        _, err = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate()
    return err


async def test_a_task_that_kills_its_process_is_dead_lettered_and_its_caller_told(
        tmp_path: Path) -> None:
    """os._exit in a task used to be redelivered for ever (the worker owning the embedded
    directory died with the broker, and its delivery was never counted). Now each crash
    counts; once the attempts are used up the call is dead-lettered and result() raises;
    the worker goes on serving other calls."""
    data = tmp_path / "data"
    worker = _worker(str(data))
    try:
        await asyncio.sleep(2.0)  # the worker owns the directory; this process joins it
        os.environ["FAULTAPP_URL"] = str(data)
        sys.path.insert(0, str(HERE))
        try:
            import faultapp  # the worker's own task definitions
        finally:
            sys.path.remove(str(HERE))
        async with faultapp.client as client:
            handle = await faultapp.die.send()
            with pytest.raises(TaskError) as failed:
                await handle.result(timeout_s=60)
            assert failed.value.remote_type == "WorkerLostError"
            assert "delivered 3 times" in str(failed.value)
            deadline = time.monotonic() + 10
            while not (dead := await client.dead_letters("faults-die")) and \
                    time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [m.message_id for m in dead] == [handle.id]
            assert await (await faultapp.add.send(2, 3)).result(timeout_s=60) == 5
    finally:
        err = _stop(worker)
    assert err.count("exited with code 3") == 2, err  # two attempts, two crashes, no more


async def test_results_that_are_not_json_and_overrunning_plain_tasks(
        tmp_path: Path) -> None:
    """A result JSON cannot carry is a TaskError naming its type (it was sent as its repr).
    Plain tasks blocked past their time limit free their slot at once; once two threads are
    stuck the process finishes its work and is replaced, and normal calls still complete."""
    server = ServerProcess(tmp_path / "server").start()
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
    worker = _worker(url, "--max-stuck-threads", "2")
    os.environ["FAULTAPP_URL"] = url
    sys.path.insert(0, str(HERE))
    try:
        import faultapp
    finally:
        sys.path.remove(str(HERE))
    try:
        async with tidings.connect(url) as client:
            for name, task in faultapp.client.tasks.items():
                del name
                task.client = client  # send through this test's client
            with pytest.raises(TaskError, match="returned a set, which is not JSON") as bad:
                await (await faultapp.not_json.send()).result(timeout_s=60)
            assert bad.value.remote_type == "ResultNotJSONError"
            for _ in range(2):
                with pytest.raises(TaskError, match=r"ran longer than its limit of 0\.3 s"):
                    await (await faultapp.hang.send()).result(timeout_s=60)
                assert await (await faultapp.add.send(1, 1)).result(timeout_s=60) == 2
            await asyncio.sleep(3)  # two stuck: the process is replaced; the new one serves
            assert await (await faultapp.add.send(2, 2)).result(timeout_s=60) == 4
    finally:
        err = _stop(worker)
        server.stop()
    assert "task 'faultapp.hang' ran past its time limit of 0.3 s" in err, err
    assert "asked to be replaced" in err, err


async def test_timed_out_plain_tasks_never_starve_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, a plain task past its timeout kept its thread of asyncio's small default pool:
    after about six, nothing ran. Pure-Python overruns are interrupted; blocked ones count
    as stuck."""
    client = tidings.connect("memory://")

    @client.task(queue="slow", timeout_s=0.2, retries=0)
    def blocked() -> None:
        time.sleep(30)

    @client.task(queue="slow", timeout_s=0.2, retries=0)
    def spinning() -> None:
        while True:
            pass

    @client.task(queue="slow")
    def add(a: int, b: int) -> int:
        return a + b

    with caplog.at_level(logging.WARNING):
        async with client:
            await client.start()
            handles = [await blocked.send() for _ in range(10)] + [await spinning.send()]
            for handle in handles:
                with pytest.raises(TaskError, match="TimeoutError"):
                    await handle.result(timeout_s=30)
            assert await (await add.send(2, 3)).result(timeout_s=10) == 5
            deadline = time.monotonic() + 10
            while client.task_threads.stuck > 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert client.task_threads.stuck == 10  # the spinning one was interrupted
    assert "task 'slow' " not in caplog.text
    assert "ran past its time limit of 0.2 s" in caplog.text


async def test_a_task_raising_cancelled_error_fails_and_keeps_its_slot() -> None:
    client = tidings.connect("memory://")

    @client.task(queue="c", retries=0, concurrency=1)
    async def cancels() -> None:
        raise asyncio.CancelledError

    @client.task(queue="c", concurrency=1)
    async def fine() -> str:
        return "ok"

    async with client:
        await client.start()
        with pytest.raises(TaskError) as failed:
            await (await cancels.send()).result(timeout_s=10)
        assert failed.value.remote_type == "CancelledError"
        assert await (await fine.send()).result(timeout_s=10) == "ok"


def test_a_worker_that_cannot_run_stops_with_one_line() -> None:
    """No task for the queues asked: the supervisor used to restart its children 30 times
    in 20 s, for ever; it exits 2 with one line."""
    started = time.monotonic()
    worker = _worker("memory-never-used", "--queues", "nope")
    try:
        _, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 2
    assert "has no tasks, handlers, subscriptions or machines for queues ['nope']" in err
    assert time.monotonic() - started < 20


def test_an_unreachable_broker_is_retried_with_growing_pauses() -> None:
    """A crash loop (here: a broker that refuses connections) is restarted after pauses
    that double, logged once per attempt: 74 lines in 15 s before."""
    worker = _worker("amqp://guest:guest@127.0.0.1:1/")
    time.sleep(10)  # pauses of 0.5, 1, 2, 4 s, each after a child's start-up
    err = _stop(worker)
    restarts = [line for line in err.splitlines() if "restarting in" in line]
    assert 2 <= len(restarts) <= 6, err
    assert "restarting in 0.5 s" in restarts[0] and "restarting in 1.0 s" in restarts[1]
    assert len(err.splitlines()) <= 3 * len(restarts) + 4, err
    assert "Traceback" not in err


def test_a_clean_sigterm_on_a_shared_directory_logs_no_lost_connection(
        tmp_path: Path) -> None:
    """Processes sharing a data directory stop together: the joiners see the owner's broker
    close, which is no news while they stop (it was logged as a lost connection)."""
    worker = _worker(str(tmp_path / "data"), "--processes", "2")
    time.sleep(4)
    err = _stop(worker)
    assert worker.returncode == 0, err
    assert err.count("stopped: 0 handled") == 2, err
    assert "WARNING" not in err and "lost" not in err, err
