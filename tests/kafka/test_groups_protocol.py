"""The group coordinator byte by byte: Kafka's classic protocol as its clients rely on it
(member ids, generations, rebalances, session expiry, static members, the errors of each
state), offsets as named readers, and the bounds a join flood meets."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.schema.consumer_group_heartbeat.v0.request import ConsumerGroupHeartbeatRequest
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.leave_group.v3 import request as leave
from kio.schema.offset_commit.v7 import request as commit
from kio.schema.offset_fetch.v5 import request as offset_fetch
from kio.schema.sync_group.v3 import request as sync

from tidings.kafka.errors import GroupError
from tidings.kafka.groups import Coordinator
from tidings.kafka.settings import KafkaSettings
from tidings.record_batch import encode_batch

from ..serverproc import ServerProcess, running
from .groups_wire import REBALANCE, SESSION, join_body
from .raw import RawKafka
from .test_protocol import _create, _produce


@pytest.fixture(scope="module")
def groups_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("groups")) / "data", "--kafka-port", "0",
                 "--http-port", "-1", "--kafka-group-initial-rebalance-delay-ms", "0",
                 "--kafka-group-min-session-timeout-ms", "500") as proc:
        yield proc


@pytest.fixture
def connect(groups_server: ServerProcess) -> Iterator:
    opened: list[RawKafka] = []

    def new() -> RawKafka:
        opened.append(RawKafka(groups_server.kafka_port))
        return opened[-1]
    yield new
    for each in opened:
        each.close()


def _send_join(raw: RawKafka, group: str, member_id: str = "", **kw: object) -> None:
    raw.send_frame(raw.frame(11, 5, join_body(group, member_id, **kw)))  # type: ignore[arg-type]


def _read(raw: RawKafka, api_key: int, version: int):  # type: ignore[no-untyped-def]
    from kio.index import load_response_schema
    from kio.serial import entity_reader
    data = raw.read_frame()
    assert data, "the server closed the connection"
    return entity_reader(load_response_schema(api_key, version))(data, 4)[0]


def _join(raw: RawKafka, group: str, member_id: str = "", **kw: object):  # type: ignore[no-untyped-def]
    """JoinGroup v5 until it is not MEMBER_ID_REQUIRED."""
    _send_join(raw, group, member_id, **kw)
    response = _read(raw, 11, 5)
    if response.error_code == ErrorCode.member_id_required:
        assert response.member_id and not member_id
        _send_join(raw, group, response.member_id, **kw)
        response = _read(raw, 11, 5)
    return response


def _sync(raw: RawKafka, group: str, generation: int, member_id: str,
          assignments: dict[str, bytes] | None = None, instance: str | None = None):  # type: ignore[no-untyped-def]
    return raw.request(14, 3, sync.SyncGroupRequest(
        group_id=group, generation_id=generation, member_id=member_id,
        group_instance_id=instance, assignments=tuple(
            sync.SyncGroupRequestAssignment(member_id=m, assignment=a)
            for m, a in (assignments or {}).items())))


def _heartbeat(raw: RawKafka, group: str, generation: int, member_id: str,
               instance: str | None = None) -> ErrorCode:
    return raw.request(12, 3, HeartbeatRequest(
        group_id=group, generation_id=generation, member_id=member_id,
        group_instance_id=instance)).error_code


def test_coordinator_is_this_broker(connect, groups_server: ServerProcess) -> None:
    found = connect().request(10, 2, FindCoordinatorRequest(key="any-group", key_type=0))
    assert found.error_code == ErrorCode.none
    assert (found.node_id, found.port) == (1, groups_server.kafka_port)


def test_one_member_gets_an_id_a_generation_and_its_own_assignment(connect) -> None:
    raw = connect()
    first = raw.request(11, 5, join_body("solo"))
    assert first.error_code == ErrorCode.member_id_required and first.member_id
    joined = _join(raw, "solo", first.member_id)
    assert joined.error_code == ErrorCode.none
    assert joined.generation_id == 1 and joined.leader == joined.member_id == first.member_id
    assert joined.protocol_name == "range"
    assert [(m.member_id, m.metadata) for m in joined.members] == [(first.member_id, b"sub-a")]
    synced = _sync(raw, "solo", 1, first.member_id, {first.member_id: b"\x00\x01partitions"})
    assert synced.error_code == ErrorCode.none and synced.assignment == b"\x00\x01partitions"
    assert _heartbeat(raw, "solo", 1, first.member_id) == ErrorCode.none
    assert _heartbeat(raw, "solo", 0, first.member_id) == ErrorCode.illegal_generation
    assert _heartbeat(raw, "solo", 1, "nobody") == ErrorCode.unknown_member_id


def test_a_second_member_makes_the_first_rejoin_and_gets_the_leaders_assignment(
        connect) -> None:
    a, b = connect(), connect()
    first = _join(a, "pair")
    _sync(a, "pair", first.generation_id, first.member_id, {first.member_id: b"all"})
    _send_join(b, "pair")
    pending = _read(b, 11, 5)
    assert pending.error_code == ErrorCode.member_id_required
    _send_join(b, "pair", pending.member_id, protocols=(("range", b"sub-b"),))
    time.sleep(0.2)  # b waits: a must rejoin first
    assert _heartbeat(a, "pair", first.generation_id, first.member_id) == \
        ErrorCode.rebalance_in_progress
    assert _sync(a, "pair", first.generation_id, first.member_id).error_code == \
        ErrorCode.rebalance_in_progress
    rejoined = _join(a, "pair", first.member_id)
    joined_b = _read(b, 11, 5)
    assert rejoined.generation_id == joined_b.generation_id == first.generation_id + 1
    assert rejoined.leader == joined_b.leader == first.member_id
    assert {m.member_id: m.metadata for m in rejoined.members} == {
        first.member_id: b"sub-a", pending.member_id: b"sub-b"}
    assert joined_b.members == ()  # only the leader sees the subscriptions
    generation = rejoined.generation_id
    b.send_frame(b.frame(14, 3, sync.SyncGroupRequest(
        group_id="pair", generation_id=generation, member_id=pending.member_id,
        group_instance_id=None, assignments=())))
    time.sleep(0.1)  # the follower waits for the leader's assignment
    synced_a = _sync(a, "pair", generation, first.member_id,
                     {first.member_id: b"half-1", pending.member_id: b"half-2"})
    assert synced_a.assignment == b"half-1"
    assert _read(b, 14, 3).assignment == b"half-2"
    assert _heartbeat(b, "pair", generation, pending.member_id) == ErrorCode.none


def test_a_member_that_stops_heartbeating_is_expired(connect) -> None:
    a, b = connect(), connect()
    first = _join(a, "expiry")
    _sync(a, "expiry", 1, first.member_id, {first.member_id: b"x"})
    _send_join(b, "expiry")
    b_id = _read(b, 11, 5).member_id
    _send_join(b, "expiry", b_id)
    generation = _join(a, "expiry", first.member_id).generation_id
    _read(b, 11, 5)
    _sync(a, "expiry", generation, first.member_id, {first.member_id: b"1", b_id: b"2"})
    # b says nothing more: a's heartbeats see the rebalance once b's session has lapsed
    deadline = time.monotonic() + SESSION.total_seconds() + 3
    while _heartbeat(a, "expiry", generation, first.member_id) == ErrorCode.none:
        assert time.monotonic() < deadline, "the silent member was never expired"
        time.sleep(0.2)
    alone = _join(a, "expiry", first.member_id)
    assert alone.generation_id == generation + 1
    assert [m.member_id for m in alone.members] == [first.member_id]
    assert _heartbeat(b, "expiry", generation, b_id) == ErrorCode.unknown_member_id


def test_leave_group_v3_answers_per_member_and_the_rest_rebalance_at_once(connect) -> None:
    a, b = connect(), connect()
    first = _join(a, "leaving", session=datetime.timedelta(seconds=60))
    _send_join(b, "leaving", session=datetime.timedelta(seconds=60))
    b_id = _read(b, 11, 5).member_id
    _send_join(b, "leaving", b_id, session=datetime.timedelta(seconds=60))
    generation = _join(a, "leaving", first.member_id,
                       session=datetime.timedelta(seconds=60)).generation_id
    _read(b, 11, 5)
    _sync(a, "leaving", generation, first.member_id, {first.member_id: b"1", b_id: b"2"})
    left = b.request(13, 3, leave.LeaveGroupRequest(group_id="leaving", members=(
        leave.MemberIdentity(member_id=b_id, group_instance_id=None),
        leave.MemberIdentity(member_id="stranger", group_instance_id=None))))
    assert left.error_code == ErrorCode.none
    assert [(m.member_id, m.error_code) for m in left.members] == [
        (b_id, ErrorCode.none), ("stranger", ErrorCode.unknown_member_id)]
    # not after b's 60 s session: now
    assert _heartbeat(a, "leaving", generation, first.member_id) == \
        ErrorCode.rebalance_in_progress
    assert _join(a, "leaving", first.member_id,
                 session=datetime.timedelta(seconds=60)).generation_id == generation + 1


def test_a_static_member_returns_without_a_rebalance_and_fences_its_old_id(connect) -> None:
    a, s = connect(), connect()
    leader = _join(a, "static")
    _sync(a, "static", 1, leader.member_id, {leader.member_id: b"all"})
    s.send_frame(s.frame(11, 5, join_body("static", instance="worker-1")))
    generation = _join(a, "static", leader.member_id).generation_id
    old = _read(s, 11, 5)
    assert old.error_code == ErrorCode.none and old.member_id.startswith("worker-1-")
    _sync(a, "static", generation, leader.member_id,
          {leader.member_id: b"p0", old.member_id: b"p1"})
    assert _sync(s, "static", generation, old.member_id, instance="worker-1").assignment == \
        b"p1"
    # the process restarts: the same instance id, no member id
    back = _join(connect(), "static", instance="worker-1")
    assert back.error_code == ErrorCode.none and back.member_id != old.member_id
    assert back.generation_id == generation  # no new generation
    assert _heartbeat(a, "static", generation, leader.member_id) == ErrorCode.none
    assert _heartbeat(s, "static", generation, old.member_id, "worker-1") == \
        ErrorCode.fenced_instance_id


def test_protocols_every_member_supports_and_nothing_else(connect) -> None:
    a, b, c = connect(), connect(), connect()
    _send_join(a, "choose", protocols=(("range", b"r"), ("roundrobin", b"rr")))
    a_id = _read(a, 11, 5).member_id
    _send_join(a, "choose", a_id, protocols=(("range", b"r"), ("roundrobin", b"rr")))
    time.sleep(0.2)
    _send_join(b, "choose", protocols=(("roundrobin", b"rr-b"),))
    b_id = _read(b, 11, 5).member_id
    first = _read(a, 11, 5)  # generation 1 completed with a alone
    assert first.protocol_name == "range"
    _send_join(b, "choose", b_id, protocols=(("roundrobin", b"rr-b"),))
    second = _join(a, "choose", a_id, protocols=(("range", b"r"), ("roundrobin", b"rr")))
    assert second.protocol_name == "roundrobin"
    assert {m.metadata for m in second.members} == {b"rr", b"rr-b"}
    _read(b, 11, 5)
    refused = c.request(11, 5, join_body("choose", protocols=(("sticky", b"s"),)))
    assert refused.error_code == ErrorCode.inconsistent_group_protocol


def test_session_timeouts_outside_the_brokers_bounds_are_refused(connect) -> None:
    refused = connect().request(11, 5, join_body("bounds",
                                                  session=datetime.timedelta(milliseconds=10)))
    assert refused.error_code == ErrorCode.invalid_session_timeout


def test_the_new_consumer_protocol_is_refused_with_a_reason(connect) -> None:
    refused = connect().request(68, 0, ConsumerGroupHeartbeatRequest(
        group_id="kip848", member_id="", member_epoch=0, rebalance_timeout=REBALANCE,
        subscribed_topic_names=("t",), topic_partitions=()))
    assert refused.error_code == ErrorCode.unsupported_version
    assert "group.protocol=classic" in (refused.error_message or "")


def _commit(raw: RawKafka, group: str, topic: str, offset: int, metadata: str | None = None,
            generation: int = -1, member_id: str = "") -> ErrorCode:
    response = raw.request(8, 7, commit.OffsetCommitRequest(
        group_id=group, generation_id_or_member_epoch=generation, member_id=member_id,
        group_instance_id=None, topics=(commit.OffsetCommitRequestTopic(name=topic, partitions=(
            commit.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset,
                                                committed_metadata=metadata),)),)))
    return response.topics[0].partitions[0].error_code


def _committed(raw: RawKafka, group: str, topic: str) -> tuple[int, str | None]:
    response = raw.request(9, 5, offset_fetch.OffsetFetchRequest(group_id=group, topics=(
        offset_fetch.OffsetFetchRequestTopic(name=topic, partition_indexes=(0,)),)))
    found = response.topics[0].partitions[0]
    assert found.error_code == ErrorCode.none
    return found.committed_offset, found.metadata


def test_offsets_commit_and_read_back_with_their_metadata(connect) -> None:
    raw = connect()
    assert _create(raw, "committed") == ErrorCode.none
    for i in range(5):
        _produce(raw, "committed", encode_batch(0, [(0, None, f"r{i}".encode(), [])]))
    assert _committed(raw, "offsets-g", "committed")[0] == -1  # nothing committed yet
    assert _commit(raw, "offsets-g", "committed", 3, "note") == ErrorCode.none
    assert _committed(raw, "offsets-g", "committed") == (3, "note")
    assert _commit(raw, "offsets-g", "committed", 0) == ErrorCode.none  # back to the start
    assert _committed(raw, "offsets-g", "committed")[0] == 0
    assert _commit(raw, "offsets-g", "committed", 5) == ErrorCode.none  # all of it
    assert _commit(raw, "offsets-g", "committed", 99) == ErrorCode.offset_out_of_range
    assert _commit(raw, "offsets-g", "committed", 1, "x" * 5000) == \
        ErrorCode.offset_metadata_too_large
    assert _commit(raw, "offsets-g", "no-such-topic", 1) == ErrorCode.unknown_topic_or_partition
    assert _committed(raw, "offsets-g", "committed")[0] == 5
    # an active group takes commits from its members only, of the current generation
    member = _join(raw, "offsets-g")
    assert _commit(raw, "offsets-g", "committed", 2, generation=member.generation_id,
                   member_id=member.member_id) == ErrorCode.rebalance_in_progress  # no sync
    _sync(raw, "offsets-g", member.generation_id, member.member_id, {member.member_id: b""})
    assert _commit(raw, "offsets-g", "committed", 2) == ErrorCode.unknown_member_id
    assert _commit(raw, "offsets-g", "committed", 2, generation=member.generation_id,
                   member_id="other") == ErrorCode.unknown_member_id
    assert _commit(raw, "offsets-g", "committed", 2, generation=member.generation_id + 1,
                   member_id=member.member_id) == ErrorCode.illegal_generation
    assert _commit(raw, "offsets-g", "committed", 2, generation=member.generation_id,
                   member_id=member.member_id) == ErrorCode.none
    assert _committed(raw, "offsets-g", "committed")[0] == 2


def test_a_join_flood_meets_the_bounds() -> None:
    async def main() -> None:
        settings = KafkaSettings("127.0.0.1", 9092, group_max_size=5, max_members=8,
                                 group_min_session_timeout_ms=10,
                                 group_initial_rebalance_delay_ms=0)
        coordinator = Coordinator(settings)
        codes = []
        for i in range(20):
            try:
                coordinator.join(f"flood-{i % 3}", "", None, "c", "h", 100, 100, "consumer",
                                 (("range", b"m"),), 5)
            except GroupError as e:
                codes.append((e.error_code, str(e)))
        pending = [c for c in codes if c[0] == ErrorCode.member_id_required]
        assert len(pending) == 8  # the broker's bound, below three groups of five
        assert coordinator.pending_count == 8
        assert {c for c, _ in codes} == {ErrorCode.member_id_required,
                                         ErrorCode.group_max_size_reached}
        await asyncio.sleep(0.5)  # member ids never used lapse with their session
        assert coordinator.pending_count == 0 and not coordinator.groups
        coordinator.close()
    asyncio.run(main())


def test_groups_with_only_committed_offsets_are_listed_as_empty(connect) -> None:
    from kio.schema.describe_groups.v4.request import DescribeGroupsRequest
    from kio.schema.list_groups.v4.request import ListGroupsRequest

    raw = connect()
    assert _create(raw, "listed") == ErrorCode.none
    _produce(raw, "listed", encode_batch(0, [(0, None, b"r", [])]))
    assert _commit(raw, "offsets-only", "listed", 1) == ErrorCode.none
    member = _join(raw, "with-members")
    listed = {(g.group_id, g.group_state)
              for g in raw.request(16, 4, ListGroupsRequest(states_filter=())).groups}
    assert {("offsets-only", "Empty"), ("with-members", "CompletingRebalance")} <= listed
    empty = raw.request(16, 4, ListGroupsRequest(states_filter=("Empty",))).groups
    assert "offsets-only" in {g.group_id for g in empty}
    assert "with-members" not in {g.group_id for g in empty}
    described = raw.request(15, 4, DescribeGroupsRequest(
        groups=("offsets-only", "never-seen", "with-members"),
        include_authorized_operations=False)).groups
    assert [g.group_state for g in described] == ["Empty", "Dead", "CompletingRebalance"]
    assert [m.member_id for m in described[2].members] == [member.member_id]


def test_answers_nobody_waits_for_any_more_leave_no_traceback(
        connect, groups_server: ServerProcess) -> None:
    """A member whose connection went while its JoinGroup waited, then removed: the answer
    that will never be sent is dropped quietly (no 'exception was never retrieved')."""
    a, b, c = connect(), connect(), connect()
    first = _join(a, "gone", session=datetime.timedelta(seconds=60))
    _sync(a, "gone", first.generation_id, first.member_id, {first.member_id: b"x"})
    _send_join(b, "gone", session=datetime.timedelta(seconds=60))
    b_id = _read(b, 11, 5).member_id
    _send_join(b, "gone", b_id, session=datetime.timedelta(seconds=60))  # waits for a
    time.sleep(0.2)
    b.close()
    time.sleep(0.2)
    left = c.request(13, 3, leave.LeaveGroupRequest(group_id="gone", members=(
        leave.MemberIdentity(member_id=b_id, group_instance_id=None),)))
    assert left.members[0].error_code == ErrorCode.none
    time.sleep(0.5)
    log = groups_server.log.read_text()
    assert "never retrieved" not in log and "Traceback" not in log


def test_members_joining_and_leaving_in_churn_leave_nothing_behind() -> None:
    """Thousands of members join and leave (and their JoinGroup answers are never awaited):
    the coordinator's counts and bytes return to nothing and the groups are forgotten."""
    async def main() -> None:
        settings = KafkaSettings("127.0.0.1", 9092, group_min_session_timeout_ms=10,
                                 group_initial_rebalance_delay_ms=0)
        coordinator = Coordinator(settings)
        for _ in range(20):
            joined = [coordinator.join(f"churn-{i % 7}", "", None, "c", "h", 60_000, 60_000,
                                       "consumer", (("range", b"m" * 100),), 3)
                      for i in range(100)]
            assert coordinator.member_count == 100 and coordinator.state_bytes > 0
            for answer in joined:
                result = await answer  # type: ignore[misc]
                coordinator.leave(f"churn-{joined.index(answer) % 7}", result.member_id, None)
        assert (coordinator.member_count, coordinator.state_bytes) == (0, 0)
        assert not coordinator.groups
        coordinator.close()
    asyncio.run(main())


def test_delete_groups_forgets_the_offsets_of_a_group_without_members(connect) -> None:
    from kio.schema.delete_groups.v1.request import DeleteGroupsRequest

    raw = connect()
    assert _create(raw, "deleted-offsets", 2) == ErrorCode.none
    _produce(raw, "deleted-offsets", encode_batch(0, [(0, None, b"r", [])]))
    assert _commit(raw, "to-delete", "deleted-offsets", 1) == ErrorCode.none
    _join(raw, "busy-group")
    results = raw.request(42, 1, DeleteGroupsRequest(
        groups_names=("to-delete", "busy-group", "no-such-group"))).results
    assert [(r.group_id, r.error_code) for r in results] == [
        ("to-delete", ErrorCode.none), ("busy-group", ErrorCode.non_empty_group),
        ("no-such-group", ErrorCode.group_id_not_found)]
    assert _committed(raw, "to-delete", "deleted-offsets")[0] == -1
