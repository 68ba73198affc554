"""Other real clients against a real tidings serve: aio-pika (robust connection included),
kombu with py-amqp, a Celery worker with the rpc:// result backend, FastStream's
RabbitBroker and Dramatiq's RabbitmqBroker."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from ..serverproc import ServerProcess


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def url(server: ServerProcess) -> str:
    return f"amqp://guest:guest@127.0.0.1:{server.port}/"


async def test_aio_pika_publish_with_confirms_and_consume(server: ServerProcess) -> None:
    connection = await aio_pika.connect(url(server))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=20)
        queue = await channel.declare_queue(unique("aio"), durable=True)
        for i in range(100):
            await channel.default_exchange.publish(
                aio_pika.Message(f"{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            )
        got = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    got.append(int(message.body))
                if len(got) == 100:
                    break
        assert got == list(range(100))


async def test_aio_pika_topic_exchange_and_get(server: ServerProcess) -> None:
    async with await aio_pika.connect(url(server)) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(unique("events"), aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "orders.#")
        await exchange.publish(aio_pika.Message(b"created"), "orders.eu.created")
        await exchange.publish(aio_pika.Message(b"ignored"), "users.created")
        message = await queue.get(timeout=5)
        assert message.body == b"created"
        await message.ack()
        assert await queue.get(fail=False) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_aio_pika_robust_connection_survives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "data").start(port)
    try:
        connection = await aio_pika.connect_robust(f"amqp://guest:guest@127.0.0.1:{port}/",
                                                   reconnect_interval=0.2)
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("robust", durable=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"before", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "robust")
        server.kill()
        server = ServerProcess(tmp_path / "data").start(port)
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *a: reconnected.set())
        await asyncio.wait_for(reconnected.wait(), 20)
        await channel.default_exchange.publish(
            aio_pika.Message(b"after", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "robust")
        bodies = []
        for _ in range(2):
            message = await queue.get(timeout=5)
            bodies.append(message.body)
            await message.ack()
        assert bodies == [b"before", b"after"]
        await connection.close()
    finally:
        server.stop()


def test_kombu_with_py_amqp(server: ServerProcess) -> None:
    import kombu

    name = unique("kombu")
    with kombu.Connection(f"pyamqp://guest:guest@127.0.0.1:{server.port}//") as conn:
        exchange = kombu.Exchange(name, "direct", durable=True)
        queue = kombu.Queue(name, exchange, routing_key="k")
        with conn.Producer() as producer:
            producer.publish({"hello": "kombu"}, exchange=exchange, routing_key="k",
                             declare=[queue], serializer="json")
        got = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: (got.append(body), msg.ack())]):
            conn.drain_events(timeout=5)
        assert got == [{"hello": "kombu"}]


@pytest.fixture
def celery_app(server: ServerProcess) -> Iterator[object]:
    from celery import Celery

    app = Celery("tidings_test", broker=f"pyamqp://guest:guest@127.0.0.1:{server.port}//",
                 backend="rpc://")
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                    task_default_queue=unique("celery"))

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app


def test_celery_worker_executes_a_task_and_returns_the_result(celery_app: object) -> None:
    from celery.contrib.testing.worker import start_worker

    app = celery_app
    # The test worker takes about 10 s to stop, against RabbitMQ just the same.
    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING",  # type: ignore[arg-type]
                      shutdown_timeout=30):
        result = app.send_task("add", args=(2, 3))  # type: ignore[attr-defined]
        assert result.get(timeout=20) == 5


async def test_faststream_rabbit_broker(server: ServerProcess) -> None:
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(url(server))
    name = unique("fs")
    received: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @broker.subscriber(name)
    async def handle(body: str) -> None:
        if not received.done():
            received.set_result(body)

    await broker.start()
    try:
        await broker.publish("hello faststream", name)
        assert await asyncio.wait_for(received, 10) == "hello faststream"
    finally:
        await broker.stop()


async def test_faststream_request_reply_many_times(server: ServerProcess) -> None:
    """FastStream's request() consumes amq.rabbitmq.reply-to anew on one channel per call
    (it worked once in 50 calls when a second consume after a cancel was a 404)."""
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(url(server), logger=None)
    name = unique("fs-rpc")

    @broker.subscriber(name)
    async def double(n: int) -> int:
        return n * 2

    await broker.start()
    try:
        for i in range(10):
            reply = await asyncio.wait_for(broker.request(i, name), 10)
            assert await reply.decode() == i * 2
    finally:
        await broker.stop()


def test_dramatiq_rabbitmq_broker(server: ServerProcess) -> None:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{server.port}/")
    dramatiq.set_broker(broker)
    done = threading.Event()
    seen: list[int] = []

    @dramatiq.actor(queue_name=unique("dramatiq"), broker=broker)
    def remember(n: int) -> None:
        seen.append(n)
        done.set()

    remember.send(42)
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        assert done.wait(20)
        assert seen == [42]
    finally:
        worker.stop()
        broker.close()
