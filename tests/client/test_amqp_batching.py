"""The AMQP transport gathers what one loop turn does: sends into batches (to a tidings
server), acks into few frames (any broker). Each send still fails alone, and acks and nacks
in any order settle exactly the messages they name, on tidings serve and on RabbitMQ."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tidings.client.amqp import AmqpTransport
from tidings.client.transport import Delivery, QueueSpec
from tidings.errors import NotFoundError, PreconditionFailedError
from tidings.message import Message

from .. import services
from ..serverproc import ServerProcess


@pytest.fixture(scope="module")
def tidings_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("batching")) / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(params=["tidings", "rabbitmq"])
async def transport(request: pytest.FixtureRequest,
                    tidings_serve: ServerProcess) -> AsyncIterator[AmqpTransport]:
    if request.param == "tidings":
        url = f"amqp://guest:guest@127.0.0.1:{tidings_serve.port}/"
    else:
        url = services.rabbitmq_url()
    t = await AmqpTransport(url).open()
    yield t
    await t.close()


async def _queue(t: AmqpTransport, max_length: int | None = None) -> str:
    name = f"batching-{uuid.uuid4().hex[:8]}"
    overflow = (("x-overflow", "reject-publish"),) if max_length else ()
    await t.declare_queue(name, QueueSpec(delivery_limit=None, dead_letters=False,
                                          max_length=max_length, arguments=overflow))
    return name


async def test_sends_of_one_turn_fail_alone(transport: AmqpTransport) -> None:
    q = await _queue(transport)
    full = await _queue(transport, max_length=1)
    targets = [q, f"missing-{uuid.uuid4().hex[:8]}", full, full, q] * 4
    results = await asyncio.gather(
        *(transport.send(target, [Message(f"m{i}".encode())]) for i, target in
          enumerate(targets)), return_exceptions=True)
    outcome = ["missing" if isinstance(r, NotFoundError) else
               "full" if isinstance(r, PreconditionFailedError) else "ok" if r is None else r
               for r in results]
    expected = ["ok", "missing", "ok", "full", "ok"] + ["ok", "missing", "full", "full", "ok"] * 3
    if not transport.is_tidings:  # (the quorum queue declared there keeps its own overflow)
        expected = [o if o != "full" else outcome[i] for i, o in enumerate(expected)]
    assert outcome == expected
    taken = []
    while (d := await transport.get(q)) is not None:
        taken.append(d.message.body)
        await transport.ack([d.delivery_tag])
    assert taken == [f"m{i}".encode() for i, t in enumerate(targets) if t == q]
    await transport.purge(full)


async def test_acks_and_nacks_in_any_order_settle_exactly_those(
        transport: AmqpTransport) -> None:
    q = await _queue(transport)
    await transport.send(q, [Message(f"m{i}".encode()) for i in range(40)])
    got: asyncio.Queue[Delivery] = asyncio.Queue()
    consumer = await transport.consume(q, 40, got.put_nowait)
    first = [await asyncio.wait_for(got.get(), 10) for _ in range(40)]
    rng = random.Random(7)
    rng.shuffle(first)
    requeued = {d.message.body for d in first[::5]}
    for i, d in enumerate(first):  # acks gathered per loop turn, nacks written at once
        if d.message.body in requeued:
            await transport.nack(d.delivery_tag, requeue=True)
        else:
            await transport.ack([d.delivery_tag])
        if i % 7 == 0:
            await asyncio.sleep(0)
    again = [await asyncio.wait_for(got.get(), 10) for _ in range(len(requeued))]
    assert {d.message.body for d in again} == requeued
    assert all(d.redelivered for d in again)
    await transport.ack([d.delivery_tag for d in again])
    await asyncio.sleep(0.3)
    assert got.empty(), "an acked message came back"
    await consumer.cancel()
    assert await transport.get(q) is None  # everything settled, nothing left
