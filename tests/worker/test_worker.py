"""``tidings worker``: processes share a queue's work, survive a SIGKILLed sibling, stop
gently on SIGTERM, and spread a group's events once per group; tasks return results and
remote errors. On a tidings serve of the test's own, the machine's RabbitMQ, NATS and Redis,
and over Kafka (the Kafka face of a tidings serve)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import tidings
from tidings.client.tasks import TaskError

from ..serverproc import ServerProcess
from ..services import nats_url, rabbitmq_url, redis_url

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tidings_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("worker")) / "data").start()
    yield f"amqp://guest:guest@127.0.0.1:{proc.port}/"
    proc.stop()


@pytest.fixture(params=["tidings-serve", "rabbitmq", "nats", "redis", "kafka"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "kafka":  # (a partition for each of up to three worker processes)
        return f"{request.getfixturevalue('kafka_face')}?partitions=3"
    if request.param == "rabbitmq":
        return rabbitmq_url()
    if request.param == "nats":
        return nats_url()
    if request.param == "redis":
        return redis_url()
    return str(request.getfixturevalue("tidings_url"))


def _env(url: str, log: Path, queue: str, topic: str = "workapp.*") -> dict[str, str]:
    return {**os.environ, "WORKAPP_URL": url, "WORKAPP_LOG": str(log), "WORKAPP_QUEUE": queue,
            "WORKAPP_TOPIC": topic, "PYTHONPATH": str(HERE)}


def _worker(env: dict[str, str], *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tidings", "worker", "workapp:client",
                             *flags], env=env, cwd=HERE, stderr=subprocess.PIPE)


def _lines(log: Path, kind: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [p for p in (line.split() for line in log.read_text().splitlines()) if p[0] == kind]


async def _until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _until_async(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_three_workers_share_the_work_and_survive_a_sigkilled_one(
        url: str, tmp_path: Path) -> None:
    """A worker process is SIGKILLed mid-work: the supervisor restarts it, its unsettled calls
    go to the others, every call is handled; SIGTERM then stops everything with exit 0."""
    log, queue = tmp_path / "done.log", f"work-{uuid.uuid4().hex[:8]}"
    supervisor = _worker(_env(url, log, queue), "--processes", "3", "--concurrency", "4")
    try:
        async with tidings.connect(url) as client:
            if not url.startswith("amqp"):  # a killed consumer's deliveries come back sooner
                await client.declare_queue(queue, consumer_timeout_ms=3000)
            for i in range(300):  # the same call the app's task makes
                await client.send(queue, {"task": "workapp.work", "args": [i], "kwargs": {}},
                                  headers={"task": "workapp.work"})
            await _until(lambda: len(_lines(log, "W")) >= 30)
            victim = int(_lines(log, "W")[0][2])
            os.kill(victim, signal.SIGKILL)
            await _until(lambda: {int(p[1]) for p in _lines(log, "W")} >= set(range(300)))
            # the supervisor looks every 0.2 s: the rest of the work can be done before that
            await _until(lambda: _restarted(supervisor.pid, victim))
        assert len({p[2] for p in _lines(log, "W")}) >= 3, "the work was shared"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        err = supervisor.stderr.read() if supervisor.stderr else b""
        if supervisor.stderr:
            supervisor.stderr.close()
    assert f"(pid {victim}) exited with code -9; restarting in 0.5 s".encode() in err
    assert b"Traceback" not in err
    for pid in {int(p[2]) for p in _lines(log, "W")}:  # no worker process outlives it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _restarted(supervisor: int, victim: int) -> bool:
    """The supervisor runs three children again, none of them ``victim``."""
    found = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    children = {int(p) for p in found.stdout.split()}
    return len(children) == 3 and victim not in children


def test_a_worker_whose_supervisor_is_killed_stops(tmp_path: Path) -> None:
    log = tmp_path / "done.log"
    supervisor = _worker(_env(f"file:{tmp_path / 'data'}", log, "work"), "--grace-s", "1")
    try:
        deadline = time.monotonic() + 30
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True,
                                   text=True)
            children = [int(p) for p in found.stdout.split()]
            time.sleep(0.1)
        assert children, "the supervisor started no worker process"
        time.sleep(2)  # the worker is running its handlers
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(children[0], 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(children[0], signal.SIGKILL)
            raise AssertionError("the orphaned worker process kept running")
    finally:
        if supervisor.stderr:
            supervisor.stderr.close()


async def test_a_group_spread_over_processes_gets_each_event_once(
        url: str, tmp_path: Path) -> None:
    log, topic = tmp_path / "events.log", f"workapp{uuid.uuid4().hex[:8]}"
    env = _env(url, log, f"work-{uuid.uuid4().hex[:8]}", topic=f"{topic}.*")
    supervisor = _worker(env, "--processes", "2", "--concurrency", "2")
    try:
        await asyncio.sleep(3)  # both processes subscribed
        async with tidings.connect(url) as client:
            if url.startswith("kafka"):  # a new topic: both members find it (every second)
                await client.publish(f"{topic}.created", {"n": 0})
                await asyncio.sleep(4)
            for n in range(1 if url.startswith("kafka") else 0, 100):
                await client.publish(f"{topic}.created", {"n": n})
            await _until(lambda: len(_lines(log, "E")) >= 100)
            await asyncio.sleep(0.5)
        numbers = [int(p[1]) for p in _lines(log, "E")]
        assert sorted(numbers) == list(range(100)), "each event once in the group"
        assert len({p[2] for p in _lines(log, "E")}) == 2, "both processes handled some"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        if supervisor.stderr:
            err = supervisor.stderr.read()
            supervisor.stderr.close()
            assert b"started" in err and b"worker stopped" in err


async def test_results_and_remote_errors_travel_back(url: str) -> None:
    queue = f"calc-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(url) as client:
        @client.task(queue=queue, retries=1, min_backoff_ms=20)
        def divide(a: int, b: int) -> float:
            return a / b

        @client.handler(queue + "-echo")
        async def echo(message: tidings.ReceivedMessage) -> dict[str, object]:
            return {"got": message.json()}

        @client.handler(queue + "-broken", retries=1, min_backoff_ms=20)
        async def broken(message: tidings.ReceivedMessage) -> None:
            raise KeyError("missing price")

        await client.start()
        assert await (await divide.send(6, 3)).result(timeout_s=20) == 2.0
        failing = await divide.send(1, 0)
        with pytest.raises(TaskError) as info:
            await failing.result(timeout_s=20)
        assert info.value.remote_type == "ZeroDivisionError"
        assert "division by zero" in str(info.value) and "Traceback" in \
            info.value.remote_traceback
        dead: list[tidings.Message] = []

        async def dead_lettered() -> bool:  # RabbitMQ dead-letters after the reject returns
            dead[:] = await client.dead_letters(queue)
            return bool(dead)

        await _until_async(dead_lettered, timeout_s=10)
        assert [m.message_id for m in dead] == [failing.id]
        assert await client.request(queue + "-echo", [1, 2], timeout_s=20) == {"got": [1, 2]}
        with pytest.raises(TaskError) as info:  # after its retry, not after the timeout
            await client.request(queue + "-broken", {}, timeout_s=20)
        assert info.value.remote_type == "KeyError" and "missing price" in str(info.value)


def test_worker_refuses_an_app_it_cannot_load_or_share(tmp_path: Path) -> None:
    env = _env("memory://", tmp_path / "x.log", "q")
    for spec, says in (("nope", "is not module:attribute"),
                       ("workapp:missing", "is not a tidings Client"),
                       ("workapp:client", "memory://, which no other process can reach")):
        out = subprocess.run([sys.executable, "-m", "tidings", "worker", spec], env=env,
                             cwd=HERE, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1


async def test_stop_lets_a_running_handler_finish_and_acknowledge(url: str) -> None:
    """A gentle stop: no new work is taken, the handler in flight finishes, and its message is
    acknowledged (not returned for someone else to run again)."""
    queue = f"slow-{uuid.uuid4().hex[:8]}"
    calls: list[int] = []
    started = asyncio.Event()
    worker = tidings.connect(url)
    async with tidings.connect(url) as producer:
        await producer.send_many(queue, [1, 2])

        @worker.handler(queue, concurrency=1, prefetch=1)
        async def slow(message: tidings.ReceivedMessage) -> None:
            calls.append(message.json())
            started.set()
            await asyncio.sleep(0.5)

        await worker.open()
        await worker.start()
        await asyncio.wait_for(started.wait(), 20)
        assert await worker.stop(grace_s=5) is True
        # (over Kafka the two may sit in different partitions: either can come first)
        assert calls == [1] or (url.startswith("kafka") and calls == [2])
        second = await producer.get(queue)
        assert second is not None and second.json() == 3 - calls[0]
        await second.ack()
        assert await producer.get(queue) is None, "the finished message came back"


def test_the_blocking_client_over_amqp(url: str) -> None:
    queue = f"blk-{uuid.uuid4().hex[:8]}"
    with tidings.connect_blocking(url) as client:
        client.declare_queue(queue, delivery_limit=0)
        client.send_many(queue, [{"n": 1}, {"n": 2}])
        got = list(client.receive(queue, prefetch=10, timeout_s=2))
        assert [m.json()["n"] for m in got] == [1, 2]
        got[0].ack()
        got[1].reject()  # past a delivery limit of 0: dead-lettered
        deadline = time.monotonic() + 10
        while not (dead := client.dead_letters(queue)) and time.monotonic() < deadline:
            time.sleep(0.05)  # RabbitMQ dead-letters after answering the reject
        assert [json.loads(m.body)["n"] for m in dead] == [2]
        assert client.replay_dead_letters(queue) == 1
        assert client.purge(queue) == 1
