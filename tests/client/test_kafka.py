"""The ``kafka://`` transport beyond the conformance suite: acknowledgements out of order over
one committed offset, URLs and logins (SASL PLAIN and SCRAM, TLS), competing consumers in
two processes' clients, and topics shared with plain Kafka programs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import tidings
from tidings.auth import UserStore
from tidings.client.kafka_ledger import Ledger, deliveries_before, history
from tidings.client.kafka_url import parse
from tidings.errors import AccessRefusedError, ConfigError

from ..kafka.secure import secure_kafka_face
from ..serverproc import ServerProcess


def test_the_committed_offset_waits_for_the_lowest_unsettled_message() -> None:
    ledger = Ledger(10)
    for offset in range(10, 15):
        ledger.handed(offset)
    ledger.settle(12)
    ledger.settle(11)
    assert ledger.point == 10  # 10 is still being worked on
    ledger.marked = ledger.next  # (a commit said how far it handed out)
    assert not ledger.advanced()
    ledger.settle(10)
    assert ledger.point == 13 and ledger.advanced() and ledger.open == 2
    ledger.committed = 13
    ledger.settle(14)
    ledger.settle(13)
    assert ledger.point == 15 and ledger.open == 0


def test_a_commit_tells_the_next_owner_how_often_each_record_was_delivered() -> None:
    """Kafka counts no deliveries: the commit's metadata carries how far this member handed
    records out and how often the open ones went out, so that a message whose consumer
    process died counts as delivered (and one that kills every process reaches the delivery
    limit)."""
    ledger = Ledger(5)
    ledger.handed(5)
    ledger.handed(6, deliveries=3)  # twice before, to members that died
    ledger.handed(7)
    ledger.settle(5)
    seen = history(ledger.metadata())
    assert [deliveries_before(o, seen) for o in (4, 6, 7, 8)] == [1, 3, 1, 0]
    assert history("not json") == (0, {}) and history(None) == (0, {})
    assert ledger.advanced()
    ledger.committed, ledger.marked = ledger.point, ledger.next
    assert not ledger.advanced()


@pytest.mark.parametrize(("url", "complaint"), [
    ("kafka://", "name at least one broker"),
    ("kafka://h:9092?partitions=0", "partitions=0"),
    ("kafka://h:9092?idempotence=maybe", "idempotence=maybe"),
    ("kafka://h:9092?linger=5", "option 'linger'"),
    ("kafka://u:p@h:9092?sasl_mechanism=GSSAPI", "sasl_mechanism=GSSAPI"),
    ("kafka://h:9092?sasl_mechanism=PLAIN", "needs a user"),
    ("kafka://h:9092?cafile=/x.pem", "need kafkas://"),
])
def test_a_bad_url_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("?", r"\?")):
        parse(url)


def test_a_url_with_a_user_logs_in_with_sasl() -> None:
    settings = parse("kafka://ann:s%40cret@a:1,b?sasl_mechanism=scram-sha-512&partitions=4")
    assert settings.common["bootstrap_servers"] == ["a:1", "b:9092"]
    assert settings.common["security_protocol"] == "SASL_PLAINTEXT"
    assert settings.common["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings.common["sasl_plain_password"] == "s@cret"
    assert settings.partitions == 4 and "s@cret" not in settings.where


BOB, BOB_PW = "bob", "bob-secret"


def _bob(users: UserStore) -> None:
    users.add_user(BOB, BOB_PW)
    users.set_permissions(BOB, "/", ".*", ".*", ".*")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    with secure_kafka_face(Path(tmp_path_factory.mktemp("kafka-logins")), _bob) as found:
        yield found


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_user_logs_in_with_each_sasl_mechanism(
        secure: tuple[ServerProcess, Path], mechanism: str) -> None:
    server, _ = secure
    url = f"kafka://{BOB}:{BOB_PW}@localhost:{server.kafka_port}?sasl_mechanism={mechanism}"
    queue = f"login-{uuid.uuid4().hex[:6]}"
    async with tidings.connect(url) as client:
        await client.declare_queue(queue)
        await client.send(queue, {"by": mechanism})
        message = await client.get(queue)
        assert message is not None and message.json() == {"by": mechanism}
        await message.ack()


async def test_tls_and_a_wrong_password(secure: tuple[ServerProcess, Path]) -> None:
    server, cert = secure
    url = f"kafkas://{BOB}:{BOB_PW}@localhost:{server.kafka_tls_port}?cafile={cert}"
    async with tidings.connect(url) as client:
        stream = f"tls-{uuid.uuid4().hex[:6]}"
        await client.stream(stream)
        await client.append(stream, b"over tls")
        async with client.read(stream, start="first") as records:
            async for record in records:
                assert record.body == b"over tls"
                break
    wrong = f"kafka://{BOB}:nope@localhost:{server.kafka_port}?connect_timeout=5"
    with pytest.raises(AccessRefusedError) as refused:
        async with tidings.connect(wrong) as client:
            await client.declare_queue("never")
    assert "nope" not in str(refused.value)


async def test_two_clients_share_a_queue_and_a_leaving_one_hands_on_what_it_held(
        kafka_face: str) -> None:
    """Two members of the queue's group share its partitions; the deliveries one held and
    never settled go to the other once it leaves (from the committed offset)."""
    url = f"{kafka_face}?partitions=2"
    queue = f"share-{uuid.uuid4().hex[:6]}"
    async with tidings.connect(url) as first, tidings.connect(url) as second:
        await first.declare_queue(queue)
        got: dict[str, list[int]] = {"first": [], "second": []}
        held = first.receive(queue, prefetch=1000)  # (it never acknowledges)
        taken = second.receive(queue, prefetch=100)

        async def take(name: str, messages: object, ack: bool) -> None:
            async for message in messages:  # type: ignore[attr-defined]
                got[name].append(message.json()["n"])
                if ack:
                    await message.ack()

        tasks = [asyncio.create_task(take("first", held, False)),
                 asyncio.create_task(take("second", taken, True))]
        sent, deadline = 0, asyncio.get_running_loop().time() + 30
        while not (got["first"] and got["second"]):  # until both joined and got some
            assert asyncio.get_running_loop().time() < deadline, f"one member took all: {got}"
            await first.send_many(queue, [{"n": n} for n in range(sent, sent + 10)])
            sent += 10
            await asyncio.sleep(0.2)
        while len(set(got["first"]) | set(got["second"])) < sent:
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.05)
        kept = list(got["first"])
        await held.aclose()  # the first leaves without settling what it held
        tasks[0].cancel()
        await first.close()
        while not set(kept) <= set(got["second"]):
            assert asyncio.get_running_loop().time() < deadline + 20, got
            await asyncio.sleep(0.05)
        await taken.aclose()
        await asyncio.wait(tasks, timeout=10)


async def test_topics_are_shared_with_plain_kafka_programs(kafka_face: str) -> None:
    """A topic another Kafka program writes reads as a stream (its key and headers kept); an
    event tidings publishes is a record other Kafka consumers read."""
    bootstrap = kafka_face.removeprefix("kafka://")
    topic = f"ext-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"from kafka", key=b"k1",
                                     headers=[("source", b"kcat")])
    finally:
        await producer.stop()
    async with tidings.connect(kafka_face) as client:
        async with client.read(topic, start="first") as records:
            async for record in records:
                assert record.body == b"from kafka"
                assert record.headers["x-kafka-key"] == "k1"
                assert record.headers["source"] == "kcat"
                break
        event_topic = f"orders.{uuid.uuid4().hex[:6]}.created"
        await client.publish(event_topic, {"order": 7})
    consumer = AIOKafkaConsumer(event_topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 10)
        assert record.value == b'{"order":7}' or record.value == b'{"order": 7}'
    finally:
        await consumer.stop()


async def test_leaving_a_receive_does_not_hang(kafka_face: str) -> None:
    """The consumer's loop ends when its last reader leaves even when the wake-up of the last
    acknowledgement and the cancel meet (``wait_for`` then swallows the cancel: the loop ran
    on and leaving waited its full ten seconds)."""
    queue = f"leave-{uuid.uuid4().hex[:6]}"
    async with tidings.connect(kafka_face) as client:
        await client.declare_queue(queue)
        await client.send_many(queue, [b"x"] * 300)
        got = 0
        receiving = client.receive(queue, prefetch=100)

        async def take_all() -> None:
            nonlocal got
            async with receiving as messages:
                async for message in messages:
                    await message.ack()
                    got += 1
                    if got == 300:
                        break

        await asyncio.wait_for(take_all(), 8)
        assert got == 300
