"""Stream queues over AMQP: the same aio-pika / pika code against ``tidings serve`` and the
RabbitMQ on this machine (stream queues are built into 3.10), which must answer alike."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pika
import pytest

from ..serverproc import ServerProcess
from ..services import rabbitmq_port


@pytest.fixture(params=["tidings", "rabbitmq"])
def port(request: pytest.FixtureRequest, server: ServerProcess) -> int:
    return server.port if request.param == "tidings" else rabbitmq_port()


@pytest.fixture
async def channel(port: int) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
    async with connection:
        yield await connection.channel()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def declare_stream(channel: aio_pika.abc.AbstractChannel, name: str,
                         **arguments: object) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(
        name, durable=True, arguments={"x-queue-type": "stream", **arguments})


async def read(port: int, queue: str, offset: object, *, want: int,
               timeout: float = 1.5) -> list[tuple[bytes, int]]:
    """(body, x-stream-offset) of what a new consumer starting at ``offset`` receives."""
    got: list[tuple[bytes, int]] = []
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=3)  # fewer than the records: acks give credit
        q = await channel.get_queue(queue, ensure=False)
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.append((message.body, message.headers["x-stream-offset"]))
            await message.ack()
            if len(got) >= want:
                done.set()

        tag = await q.consume(on_message, arguments={"x-stream-offset": offset})
        if want:
            await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(timeout if not want else 0.3)  # nothing more arrives
        await q.cancel(tag)
    return got


async def test_stream_queue_keeps_messages_for_every_start_choice(
        port: int, channel: aio_pika.abc.AbstractChannel) -> None:
    name = unique("stream")
    queue = await declare_stream(channel, name, **{"x-max-age": "1D"})
    try:
        before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
        for i in range(6):  # one confirm at a time: each is its own chunk in RabbitMQ
            await channel.default_exchange.publish(aio_pika.Message(f"m{i}".encode()), name)
        every = [(f"m{i}".encode(), i) for i in range(6)]
        assert await read(port, name, "first", want=6) == every
        assert await read(port, name, "first", want=6) == every  # reading removes nothing
        assert await read(port, name, 4, want=2) == every[4:]
        assert await read(port, name, "last", want=1) == every[5:]
        assert await read(port, name, "1h", want=6) == every
        assert await read(port, name, before.replace(microsecond=0), want=6) == every
        assert await read(port, name, "next", want=0) == []
        assert await read(port, name, 100, want=0) == []
        # a timestamp in the future starts at the tail, however far (pamqp reads AMQP
        # timestamps past 2106 as milliseconds: the year 9999 read from the first record)
        assert await read(port, name, datetime.datetime(2100, 1, 1), want=0) == []
        assert await read(port, name, datetime.datetime(9999, 1, 1), want=0) == []
        # the declare-ok counts the records the stream keeps (RabbitMQ's count catches up
        # a moment after the appends; tidings' is exact at once)
        for _ in range(50):
            found = await declare_stream(channel, name, **{"x-max-age": "1D"})
            if found.declaration_result.message_count == 6:
                break
            await asyncio.sleep(0.2)
        assert found.declaration_result.message_count == 6
    finally:
        await queue.delete()


async def test_a_live_consumer_gets_new_appends_and_consumers_read_independently(
        port: int, channel: aio_pika.abc.AbstractChannel) -> None:
    name = unique("stream")
    queue = await declare_stream(channel, name)
    try:
        task_a = asyncio.ensure_future(read(port, name, "next", want=3))
        task_b = asyncio.ensure_future(read(port, name, "next", want=3))
        await asyncio.sleep(1.0)  # both consumers are live at the tail
        for i in range(3):
            await channel.default_exchange.publish(aio_pika.Message(f"n{i}".encode()), name)
        expected = [(f"n{i}".encode(), i) for i in range(3)]
        assert await task_a == expected
        assert await task_b == expected
    finally:
        await queue.delete()


def test_stream_rules_are_refused_as_rabbitmq_refuses_them(port: int) -> None:
    name = unique("stream")
    stream = {"x-queue-type": "stream"}

    def closed(action: object, **kwargs: object) -> tuple[int, str]:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        ch = conn.channel()
        try:
            with pytest.raises((pika.exceptions.ChannelClosedByBroker,
                                pika.exceptions.ConnectionClosedByBroker)) as e:
                action(ch)  # type: ignore[operator]
                conn.process_data_events(0.5)
            return e.value.args[0], e.value.args[1]
        finally:
            if conn.is_open:
                conn.close()

    code, text = closed(lambda ch: ch.queue_declare(name, durable=False, arguments=stream))
    assert code == 406 and "invalid property 'non-durable'" in text
    code, text = closed(lambda ch: ch.queue_declare(name, exclusive=True, durable=True,
                                                    arguments=stream))
    assert code == 406 and "invalid property 'exclusive-owner'" in text
    code, text = closed(lambda ch: ch.queue_declare(name, auto_delete=True, durable=True,
                                                    arguments=stream))
    assert code == 406 and "invalid property 'auto-delete'" in text
    code, text = closed(lambda ch: ch.queue_declare(
        name, durable=True, arguments={**stream, "x-message-ttl": 1000}))
    assert code == 406 and "invalid arg 'x-message-ttl'" in text
    code, text = closed(lambda ch: ch.queue_declare(
        name, durable=True, arguments={**stream, "x-max-age": "10x"}))
    assert code == 406 and "x-max-age" in text

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    conn.channel().queue_declare(name, durable=True, arguments=stream)
    conn.close()
    try:
        code, text = closed(lambda ch: ch.basic_consume(name, lambda *a: None))
        assert code == 406 and "consumer prefetch count is not set" in text

        def no_ack(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
            ch.basic_qos(prefetch_count=10)
            ch.basic_consume(name, lambda *a: None, auto_ack=True)

        code, text = closed(no_ack)
        assert code == 540 and "automatic acknowledgement not supported" in text
        code, text = closed(lambda ch: ch.basic_get(name))
        assert code == 540 and "basic.get not supported by stream queues" in text
        code, text = closed(lambda ch: ch.queue_purge(name))
        assert code == 540 and "queue.purge not supported by stream queues" in text
    finally:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        conn.channel().queue_delete(name)
        conn.close()
