"""What survives a restart, over both stores: definitions, persistent messages, unacked
messages (back in order, redelivered), delays; and what does not: acked and transient ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.routing.ready import WINDOW_BYTES
from tidings.storage import SqliteStore
from tidings.testing import FakeClock

from ..conftest import BrokerFactory
from .helpers import drain, pub


async def test_durable_definitions_survive_and_transient_ones_do_not(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_exchange("/", "orders", "topic")
    b.declare_exchange("/", "scratch", "fanout", durable=False)
    b.declare_queue("/", "billing", arguments={"x-max-length": 100})
    b.declare_queue("/", "temp", durable=False)
    b.bind("/", "orders", "billing", "orders.#")
    b.bind("/", "orders", "temp", "orders.#")
    b.declare_vhost("tenant")
    b.declare_queue("tenant", "q")
    b = await brokers.restart()
    assert b.declare_exchange("/", "orders", passive=True).kind == "topic"
    assert b.find_queue("/", "temp") is None
    assert "scratch" not in [e.name for e in b.list_exchanges("/")]
    assert b.get_queue("/", "billing").options.max_length == 100
    assert b.find_queue("tenant", "q") is not None
    assert pub(b, "orders", "orders.created", "x").routed == 1


async def test_definitions_with_byte_array_and_timestamp_arguments_survive(
    brokers: BrokerFactory,
) -> None:
    """pika sends Python bytes as AMQP byte arrays and datetimes as timestamps: a durable
    definition holding them is stored (it was a 541 before) and comes back equivalent."""
    import datetime

    when = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    args = {"x-note": bytearray(b"\x00raw"), "x-when": when, "x-nested": {"$b": [b"x"]}}
    b = brokers.start()
    b.declare_exchange("/", "hx", "headers", arguments={"x-bin": b"\x01"})
    b.declare_queue("/", "q", arguments=args)
    b.bind("/", "hx", "q", "", {"x-match": bytearray(b"all"), "k": b"v"})
    b = await brokers.restart()
    assert b.declare_queue("/", "q", arguments=args).name == "q"  # equivalent: no 406
    assert b.get_queue("/", "q").arguments["x-note"] == b"\x00raw"
    assert b.declare_exchange("/", "hx", "headers", arguments={"x-bin": b"\x01"}).name == "hx"
    assert b.publish("/", "hx", Message(b"m", headers={"k": b"v"})).routed == 1


async def test_persistent_messages_survive_transient_do_not(brokers: BrokerFactory) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    b.declare_queue("/", "t", durable=False)
    pub(b, "", "q", "keep")
    b.publish("/", "", Message(b"lose", "q", persistent=False))
    pub(b, "", "t", "lose too")
    b = await brokers.restart()
    assert drain(b, b.open_session(), "q") == [b"keep"]


async def test_unacked_come_back_redelivered_in_order_acked_do_not(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    for i in range(6):
        pub(b, "", "q", str(i))
    s = b.open_session()
    got = [b.get(s, "q") for _ in range(4)]
    s.ack(got[1].delivery_tag)  # type: ignore[union-attr]
    s.ack(got[3].delivery_tag)  # type: ignore[union-attr]
    b = await brokers.restart()
    s = b.open_session()
    after = []
    while (d := b.get(s, "q")) is not None:
        after.append((d.message.body, d.redelivered))
    assert after == [(b"0", True), (b"2", True), (b"4", False), (b"5", False)]


async def test_delivery_count_survives_restart(brokers: BrokerFactory) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    pub(b, "", "q", "x")
    s = b.open_session()
    for _ in range(2):
        d = b.get(s, "q")
        s.nack(d.delivery_tag)  # type: ignore[union-attr]
    b = await brokers.restart()
    d = b.get(b.open_session(), "q")
    assert d is not None and d.delivery_count == 2 and d.redelivered


async def test_every_delivery_cut_short_by_a_crash_counts(brokers: BrokerFactory) -> None:
    """A message whose consumer process dies with it (os._exit, the OOM killer: the broker
    of an embedded directory dies too) counts one failed delivery per crash, so its delivery
    limit ends the loop: it was counted once, then never again."""
    b = brokers.start()
    b.declare_queue("/", "q", arguments={"x-delivery-limit": 3, "x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "dead"})
    b.declare_queue("/", "dead")
    pub(b, "", "q", "poison")
    counts = []
    for _ in range(5):
        d = b.get(b.open_session(), "q")  # delivered, then the process dies with it
        if d is None:
            break
        counts.append(d.delivery_count)
        b = await brokers.restart()
    # the fifth delivery would follow a fourth failed one, past the limit of 3: instead the
    # message is dead-lettered, with the reason
    assert counts == [0, 1, 2, 3]
    dead = b.get(b.open_session(), "dead")
    assert dead is not None and dead.message.body == b"poison"
    assert dead.message.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_delayed_messages_survive_restart_and_fire_once(
    brokers: BrokerFactory, clock: FakeClock
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    b.publish("/", "", Message(b"later", "q"), delay_ms=5000)
    b = await brokers.restart()
    s = b.open_session()
    assert drain(b, s, "q") == []
    assert b.statistics().queue("q").delayed == 1
    clock.advance(5)
    assert drain(b, s, "q") == [b"later"]
    b = await brokers.restart()
    clock.advance(10)
    assert drain(b, b.open_session(), "q") == []


async def test_paged_out_messages_survive_restart(brokers: BrokerFactory) -> None:
    b = brokers.start(queue_window=8)
    b.declare_queue("/", "deep")
    for i in range(50):
        pub(b, "", "deep", str(i))
    b = await brokers.restart(queue_window=8)
    assert b.statistics().queue("deep").ready == 50
    assert drain(b, b.open_session(), "deep") == [str(i).encode() for i in range(50)]


async def test_unacked_beyond_the_first_window_come_back_redelivered(
    brokers: BrokerFactory,
) -> None:
    """Recovery loads only the first window; messages delivered before the restart that are
    paged in later must still say redelivered (found by the queue model state machine)."""
    b = brokers.start(queue_window=4)
    b.declare_queue("/", "q")
    for i in range(7):
        pub(b, "", "q", str(i))
    await b.sync()  # paged-out rows are readable once committed
    s = b.open_session()
    for _ in range(5):
        assert b.get(s, "q") is not None
    b = await brokers.restart(queue_window=4)
    s = b.open_session()
    after = []
    while (d := b.get(s, "q")) is not None:
        after.append((d.message.body.decode(), d.redelivered, d.delivery_count))
    assert after == [(str(i), i < 5, int(i < 5)) for i in range(7)]


async def test_deep_priority_queue_survives_restart_in_priority_order(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start(queue_window=8)
    b.declare_queue("/", "p", arguments={"x-max-priority": 5})
    for i in range(30):
        pub(b, "", "p", f"low-{i}", priority=1)
    for i in range(30):
        pub(b, "", "p", f"high-{i}", priority=5)
    await b.sync()
    s = b.open_session()
    first = [b.get(s, "p") for _ in range(3)]  # delivered, never acked
    assert [d.message.body for d in first if d] == [b"high-0", b"high-1", b"high-2"]
    b = await brokers.restart(queue_window=8)
    assert b.statistics().queue("p").ready == 60
    s = b.open_session()
    got = []
    while (d := b.get(s, "p")) is not None:
        got.append((d.message.body.decode(), d.redelivered))
        s.ack(d.delivery_tag)
    assert got == ([(f"high-{i}", i < 3) for i in range(30)]
                   + [(f"low-{i}", False) for i in range(30)])


async def test_queue_names_with_the_lane_separator_keep_their_messages(
    brokers: BrokerFactory,
) -> None:
    """Priority lanes are stored as '<queue>\\x1e<level>'; a queue named like that is still
    itself, and a priority queue with such a name still finds its lanes."""
    b = brokers.start()
    b.declare_queue("/", "odd\x1e5")
    b.declare_queue("/", "odd\x1ep", arguments={"x-max-priority": 5})
    pub(b, "", "odd\x1e5", "plain")
    pub(b, "", "odd\x1ep", "urgent", priority=5)
    pub(b, "", "odd\x1ep", "calm", priority=0)
    b = await brokers.restart()
    s = b.open_session()
    assert drain(b, s, "odd\x1e5") == [b"plain"]
    assert drain(b, s, "odd\x1ep") == [b"urgent", b"calm"]


async def test_start_up_sizes_a_queue_of_large_messages_without_reading_them(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 x 4 MB messages: recovery reads what fits its window, not every body to estimate."""
    store = SqliteStore(tmp_path / "data")
    b = Broker(store, clock)
    b.start()
    b.declare_queue("/", "big")
    for i in range(20):
        b.publish("/", "", Message(bytes([i]) * (4 * 2**20), "big"))
    await b.sync()
    b.stop_timers()
    store.close()
    store = SqliteStore(tmp_path / "data")
    read: list[int] = []
    real = store.load

    def counting_load(*args: object) -> list[tuple[int, bytes]]:
        rows = real(*args)  # type: ignore[arg-type]
        read.append(sum(len(data) for _, data in rows))
        return rows

    monkeypatch.setattr(store, "load", counting_load)
    b = Broker(store, clock)
    assert b.get_queue("/", "big").ready_count == 20
    assert sum(read) <= WINDOW_BYTES + 4 * 2**20, f"{sum(read) / 2**20:.0f} MB read at start"
    s = b.open_session()
    assert [d[0] for d in drain(b, s, "big")] == list(range(20))
    store.close()
