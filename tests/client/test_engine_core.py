"""The engine core's rules, on an engine that has none (tests/client/listengine.py): the
whole transport contract, and what the core decides itself — the delivery limit and TTL on
receipt, dead letters with their reason, leases renewed while held, a delivery that arrives
after its consumer was cancelled, and a dead letter the engine fails to write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from tidings.client.engine import EngineTransport
from tidings.client.transport import Delivery, QueueSpec, StreamSpec, Transport
from tidings.errors import BrokenResourceError, InvalidArgumentError, NotFoundError
from tidings.message import Message
from tidings.testing import TRANSPORT_CHECKS
from tidings.testing.contracts import run_transport_check

from .listengine import ListEngine


async def _open() -> Transport:
    return await EngineTransport(ListEngine()).open()


@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda c: c.__name__)
async def test_the_core_meets_the_transport_contract_on_any_engine(
        check: Callable[[Transport], Awaitable[None]]) -> None:
    assert await run_transport_check(check, _open) is None  # it declines no capability


async def _core() -> tuple[EngineTransport, ListEngine]:
    engine = ListEngine()
    return await EngineTransport(engine).open(), engine


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_deliveries_past_the_limit_or_expired_are_dead_lettered_on_receipt() -> None:
    core, engine = await _core()
    await core.declare_queue("jobs", QueueSpec(delivery_limit=2))
    q = engine.queues["jobs"]
    await core.send("jobs", [Message(b"lost-twice", message_id="a")])
    q.ready[0].failures = 3  # three consumers died holding it: past the limit of two
    await core.send("jobs", [Message(b"stale", message_id="b", expiration="10")])
    q.ready[1].enqueued_ms -= 1_000
    await core.send("jobs", [Message(b"fine", message_id="c")])
    got: list[Delivery] = []
    subscription = await core.consume("jobs", 10, got.append)
    await _until(lambda: len(got) == 1 and len(engine.queues["jobs.dead"].ready) == 2)
    assert got[0].message.body == b"fine"
    dead = {m.message_id: m.headers["x-death"][0]["reason"]
            for m in await core.dead_letters("jobs", 10)}
    assert dead == {"a": "delivery_limit", "b": "expired"}
    await core.ack([got[0].delivery_tag])
    assert not q.held and not q.ready
    await subscription.cancel()
    await core.close()


async def test_the_nack_ladder() -> None:
    core, engine = await _core()
    await core.declare_queue("jobs", QueueSpec(delivery_limit=1))
    await core.send("jobs", [Message(b"x", message_id="x")])
    first = await core.get("jobs")
    assert first is not None and first.delivery_count == 0
    await core.nack(first.delivery_tag, requeue=True, delay_ms=30)  # back, later
    assert engine.queues["jobs"].delayed and await core.get("jobs") is None
    await _until(lambda: bool(engine.take("jobs", 0) or engine.queues["jobs"].ready))
    second = await core.get("jobs")
    assert second is not None and second.redelivered and second.delivery_count == 1
    await core.nack(second.delivery_tag, requeue=True)  # a second failure: past the limit
    assert [m.headers["x-death"][0]["reason"] for m in await core.dead_letters("jobs", 9)] == [
        "delivery_limit"]
    await core.send("jobs", [Message(b"y", message_id="y")])
    third = await core.get("jobs")
    assert third is not None
    await core.nack(third.delivery_tag, requeue=False)
    assert sorted((m.message_id, m.headers["x-death"][0]["reason"])
                  for m in await core.dead_letters("jobs", 9)) == [
        ("x", "delivery_limit"), ("y", "rejected")]
    await core.close()


async def test_held_deliveries_are_renewed_until_settled() -> None:
    core, engine = await _core()
    await core.declare_queue("slow", QueueSpec(consumer_timeout_ms=150))
    await core.send("slow", [Message(b"work")])
    held = await core.get("slow")
    assert held is not None
    await _until(lambda: engine.renewed.count(held.delivery_tag.handle) >= 2)
    await core.ack([held.delivery_tag])
    renewed = len(engine.renewed)
    await asyncio.sleep(0.2)
    assert len(engine.renewed) == renewed  # settled: no longer renewed
    await core.close()


async def test_a_delivery_after_the_cancel_goes_back_without_a_failure() -> None:
    core, engine = await _core()
    await core.declare_queue("jobs", QueueSpec())
    got: list[Delivery] = []
    subscription = await core.consume("jobs", 10, got.append)
    consumer = next(iter(core.consumers))
    await subscription.cancel()
    await core.send("jobs", [Message(b"late")])
    consumer.arrived(engine.take("jobs", 1)[0])  # it was in flight when the cancel came
    await _until(lambda: bool(engine.queues["jobs"].ready))
    assert not got and engine.queues["jobs"].ready[0].failures == 0
    await core.close()


async def test_a_dead_letter_the_engine_cannot_write_does_not_stall_the_consumer(
        caplog: pytest.LogCaptureFixture) -> None:
    core, engine = await _core()
    await core.declare_queue("jobs", QueueSpec(delivery_limit=0))
    await core.send("jobs", [Message(b"poison")])
    engine.queues["jobs"].ready[0].failures = 1  # past the limit on arrival
    engine.fail["rewrite"] = BrokenResourceError("the engine is down")
    got: list[Delivery] = []
    with caplog.at_level(logging.WARNING, "tidings.client"):
        subscription = await core.consume("jobs", 1, got.append)
        await _until(lambda: "could not dead-letter" in caplog.text)
    await core.send("jobs", [Message(b"next")])
    await _until(lambda: bool(got))  # the consumer's one place of prefetch came back
    assert got[0].message.body == b"next"
    await subscription.cancel()
    await core.close()


async def test_stream_commits_refuse_what_is_no_offset_or_no_stream() -> None:
    core, _ = await _core()
    await core.declare_stream("ledger", StreamSpec())
    await core.declare_queue("jobs", QueueSpec())
    await core.send("ledger", [Message(b"a"), Message(b"b")])
    for reader, offset, error in (("", 0, "non-empty name"), ("r", True, "not an offset"),
                                  ("r", -2, "not an offset"), ("r", 2, "past the end")):
        with pytest.raises(InvalidArgumentError, match=error):
            await core.commit_offset("ledger", reader, offset)
    with pytest.raises(InvalidArgumentError, match="is a queue, not a stream"):
        await core.commit_offset("jobs", "r", 0)
    with pytest.raises(NotFoundError):
        await core.commit_offset("nowhere", "r", 0)
    with pytest.raises(InvalidArgumentError, match="without delays"):
        await core.send("ledger", [Message(b"c")], delay_ms=10)
    with pytest.raises(InvalidArgumentError, match=r"client\.read"):
        await core.get("ledger")
    await core.commit_offset("ledger", "r", 1)  # the last record: fine
    await core.close()
