"""Consumer groups with the real clients: confluent-kafka (librdkafka), aiokafka, kafka-python
and kafkajs members, each its own process, in one group over a 6-partition topic.

In the steady state each record is consumed by exactly one member; a member killed with
SIGKILL loses its partitions to the others once its session lapses; a member that closes
hands its partitions over at once (well before its session would lapse); the group ends
Stable, with its offsets committed. Mixed groups where the assignor allows, and
cooperative-sticky rebalances that leave the other partitions flowing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kio.schema.describe_groups.v4.request import DescribeGroupsRequest
from kio.schema.errors import ErrorCode
from kio.schema.offset_fetch.v5 import request as offset_fetch

from ..serverproc import ServerProcess, running
from .conftest import client_library, kafkajs
from .raw import RawKafka
from .test_protocol import _create

HERE = Path(__file__).parent
PARTITIONS = 6
SESSION_MS = 10_000
LIBRARIES = ["confluent", "aiokafka", "kafka-python", "kafkajs"]
MODULES = {"confluent": "confluent_kafka", "aiokafka": "aiokafka", "kafka-python": "kafka"}


@pytest.fixture(scope="module")
def groups_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("group-clients")) / "data", "--kafka-port",
                 "0", "--http-port", "-1", "--kafka-group-initial-rebalance-delay-ms", "500",
                 "--kafka-group-min-session-timeout-ms", "1000") as proc:
        yield proc


class Member:
    """One member process and what it printed."""

    def __init__(self, library: str, bootstrap: str, topic: str, group: str,
                 strategy: str = "range", instance: str | None = None) -> None:
        self.library = library
        if library == "kafkajs":
            argv = ["node", "member.js", bootstrap, topic, group, str(SESSION_MS)]
            cwd = kafkajs()
        else:
            client_library(MODULES[library])
            argv = [sys.executable, str(HERE / "member.py"), library, bootstrap, topic, group,
                    strategy, str(SESSION_MS), *([instance] if instance else [])]
            cwd = HERE
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.owned: set[int] = set()
        self.records: list[tuple[int, int, str]] = []
        self.revocations: list[tuple[set[int], set[int]]] = []  # (owned before, revoked)
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self.lock:
                if "assigned" in event:
                    self.owned = set(event["assigned"])
                elif "revoked" in event:
                    gone = set(event["revoked"])
                    self.revocations.append((set(self.owned), gone))
                    self.owned -= gone
                else:
                    p, offset, value = event["record"]
                    self.records.append((p, offset, value))

    def values(self, prefix: str) -> list[str]:
        with self.lock:
            return [v for _, _, v in self.records if v.startswith(prefix)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def failure(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return f"{self.library} member exited {self.proc.returncode}: {self.proc.stderr.read()}"


@pytest.fixture
def members() -> Iterator[Callable[..., Member]]:
    started: list[Member] = []

    def start(*args: object, **kw: object) -> Member:
        started.append(Member(*args, **kw))  # type: ignore[arg-type]
        return started[-1]
    yield start
    for member in started:
        if member.proc.poll() is None:
            member.kill()
        member.proc.wait()
        for pipe in (member.proc.stdout, member.proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str,
               members: list[Member]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for m in members:
            assert not m.failure(), m.failure()
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s: " + \
            "; ".join(f"{m.library} owns {sorted(m.owned)}" for m in members)
        time.sleep(0.1)


def steady(members: list[Member]) -> Callable[[], bool]:
    """Every partition owned by exactly one member, and every member owns some."""
    def check() -> bool:
        owned = [set(m.owned) for m in members]
        return all(owned) and sum(map(len, owned)) == PARTITIONS and \
            set().union(*owned) == set(range(PARTITIONS))
    return check


def produce(bootstrap: str, topic: str, prefix: str, count: int) -> set[str]:
    confluent = client_library("confluent_kafka")
    producer = confluent.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    values = {f"{prefix}-{i}" for i in range(count)}
    for i in range(count):
        producer.produce(topic, value=f"{prefix}-{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(30) == 0
    return values


def seen(members: list[Member], prefix: str) -> list[str]:
    return [v for m in members for v in m.values(prefix)]


def _group(port: int, group: str) -> tuple[str, int]:
    raw = RawKafka(port)
    try:
        found = raw.request(15, 4, DescribeGroupsRequest(
            groups=(group,), include_authorized_operations=False)).groups[0]
        return found.group_state, len(found.members)
    finally:
        raw.close()


def _committed_total(port: int, group: str, topic: str) -> int:
    raw = RawKafka(port)
    try:
        response = raw.request(9, 5, offset_fetch.OffsetFetchRequest(group_id=group, topics=(
            offset_fetch.OffsetFetchRequestTopic(name=topic,
                                                 partition_indexes=tuple(range(PARTITIONS))),)))
        return sum(max(0, p.committed_offset) for p in response.topics[0].partitions)
    finally:
        raw.close()


def _topic(port: int, name: str) -> None:
    raw = RawKafka(port)
    try:
        assert _create(raw, name, PARTITIONS) == ErrorCode.none
    finally:
        raw.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_group_shares_a_topic_and_survives_a_kill_and_a_leave(
        library: str, groups_server: ServerProcess, members: Callable[..., Member]) -> None:
    port = groups_server.kafka_port
    bootstrap, topic, group = f"127.0.0.1:{port}", f"shared-{library}", f"group-{library}"
    _topic(port, topic)
    crew = [members(library, bootstrap, topic, group) for _ in range(3)]
    wait_until(steady(crew), 60, "three members sharing six partitions", crew)

    sent = produce(bootstrap, topic, "a", 600)
    wait_until(lambda: set(seen(crew, "a")) == sent, 60, "all records consumed", crew)
    time.sleep(0.5)
    assert sorted(seen(crew, "a")) == sorted(sent)  # each by exactly one member
    for m in crew:
        assert {p for p, _, v in m.records if v.startswith("a")} <= m.owned

    crew[0].kill()  # SIGKILL: no goodbye; its session has to lapse
    survivors = crew[1:]
    sent = produce(bootstrap, topic, "b", 300)
    wait_until(lambda: set(seen(survivors, "b")) == sent, SESSION_MS / 1000 + 60,
               "the killed member's partitions taken over", survivors)
    wait_until(steady(survivors), 30, "two members sharing six partitions", survivors)

    crew[1].stop()  # a clean close leaves the group
    leaving_at = time.monotonic()
    last = crew[2:]
    sent = produce(bootstrap, topic, "c", 300)
    wait_until(lambda: set(seen(last, "c")) == sent, SESSION_MS / 1000 + 60,
               "the leaving member's partitions handed over", last)
    assert time.monotonic() - leaving_at < SESSION_MS / 1000, \
        "the partitions of a member that left waited for its session to lapse"
    assert _group(port, group) == ("Stable", 1)

    crew[2].stop()
    assert _committed_total(port, group, topic) == 1200
    assert _group(port, group)[0] in ("Empty", "Dead")


def test_a_mixed_group_of_three_libraries(groups_server: ServerProcess,
                                          members: Callable[..., Member]) -> None:
    port = groups_server.kafka_port
    bootstrap, topic = f"127.0.0.1:{port}", "shared-mixed"
    _topic(port, topic)
    crew = [members(lib, bootstrap, topic, "group-mixed", "roundrobin")
            for lib in ("confluent", "kafka-python", "aiokafka")]
    wait_until(steady(crew), 60, "three libraries sharing six partitions", crew)
    sent = produce(bootstrap, topic, "m", 600)
    wait_until(lambda: set(seen(crew, "m")) == sent, 60, "all records consumed", crew)
    time.sleep(0.5)
    assert sorted(seen(crew, "m")) == sorted(sent)
    assert all(m.values("m") for m in crew)


def test_cooperative_sticky_keeps_the_other_partitions_flowing(
        groups_server: ServerProcess, members: Callable[..., Member]) -> None:
    port = groups_server.kafka_port
    bootstrap, topic = f"127.0.0.1:{port}", "shared-cooperative"
    _topic(port, topic)
    crew = [members("confluent", bootstrap, topic, "group-coop", "cooperative-sticky")
            for _ in range(2)]
    wait_until(steady(crew), 60, "two members sharing six partitions", crew)
    first = crew[0]
    before = set(first.owned)
    flowing = threading.Event()
    sent: set[str] = set()

    def keep_producing() -> None:
        i = 0
        while not flowing.is_set():
            sent.update(produce(bootstrap, topic, f"d{i}", PARTITIONS))
            i += 1
            time.sleep(0.05)
    producer = threading.Thread(target=keep_producing)
    producer.start()
    time.sleep(1)
    joined_at = len(first.records)
    crew.append(members("confluent", bootstrap, topic, "group-coop", "cooperative-sticky"))
    try:
        wait_until(steady(crew), 60, "three members sharing six partitions", crew)
    finally:
        flowing.set()
        producer.join()
    wait_until(lambda: set(seen(crew, "d")) >= sent, 60, "all records consumed", crew)
    kept = before & first.owned
    assert kept, "the first member kept none of its partitions"
    # incremental: it gave up only what moved, never everything it had
    assert all(gone < owned for owned, gone in first.revocations if owned == before)
    with first.lock:
        during = {p for p, _, v in first.records[joined_at:] if v.startswith("d")}
    assert during & kept, "the kept partitions stopped flowing"


def test_a_static_member_restarted_takes_its_partitions_back_without_a_rebalance(
        groups_server: ServerProcess, members: Callable[..., Member]) -> None:
    port = groups_server.kafka_port
    bootstrap, topic = f"127.0.0.1:{port}", "shared-static"
    _topic(port, topic)
    dynamic = members("confluent", bootstrap, topic, "group-static")
    wait_until(lambda: len(dynamic.owned) == PARTITIONS, 60, "the first member", [dynamic])
    static = members("confluent", bootstrap, topic, "group-static", instance="static-1")
    wait_until(steady([dynamic, static]), 60, "two members", [dynamic, static])
    theirs, changes = set(static.owned), len(dynamic.revocations)
    static.kill()  # no goodbye; back under the same instance id well within its session
    again = members("confluent", bootstrap, topic, "group-static", instance="static-1")
    wait_until(lambda: again.owned == theirs, 30, "the same partitions back", [again])
    sent = produce(bootstrap, topic, "s", 60)
    wait_until(lambda: set(seen([dynamic, again], "s")) == sent, 30, "all records consumed",
               [dynamic, again])
    assert len(dynamic.revocations) == changes, "the other member was rebalanced"
    assert {p for p, _, v in again.records if v.startswith("s")} == theirs


def test_members_rejoin_after_a_restart_and_resume_from_their_commits(
        tmp_path: Path, members: Callable[..., Member]) -> None:
    from ..reliability import free_port

    port = free_port()
    flags = ("--kafka-port", str(port), "--http-port", "-1",
             "--kafka-group-initial-rebalance-delay-ms", "500",
             "--kafka-group-min-session-timeout-ms", "1000")
    server = ServerProcess(tmp_path / "data", *flags).start()
    try:
        bootstrap, topic = f"127.0.0.1:{port}", "shared-restart"
        _topic(port, topic)
        crew = [members("confluent", bootstrap, topic, "group-restart") for _ in range(2)]
        wait_until(steady(crew), 60, "two members", crew)
        sent = produce(bootstrap, topic, "x", 60)
        wait_until(lambda: set(seen(crew, "x")) == sent, 30, "all records consumed", crew)
        time.sleep(1)  # (auto-commits every 200 ms)
        server.stop()
        server = ServerProcess(tmp_path / "data", *flags).start()
        sent = produce(bootstrap, topic, "y", 60)
        wait_until(lambda: set(seen(crew, "y")) == sent, 60, "consumed after the restart",
                   crew)
        assert sorted(seen(crew, "x")) == sorted(f"x-{i}" for i in range(60)), \
            "records committed before the restart were read again"
        wait_until(lambda: _group(port, "group-restart") == ("Stable", 2), 30,
                   "the group stable again", crew)
    finally:
        server.stop()
