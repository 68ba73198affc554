"""An unreadable stored record never stops recovery or the queue behind it: it is moved to the
quarantine (listed, exported, counted), and every other message is delivered once, in order."""

from __future__ import annotations

import datetime
import struct

from tidings.message import Message
from tidings.routing.delayed import is_delayed_key

from ..conftest import BrokerFactory
from .helpers import drain, pub

_META = b'{"k":"q","t0":1,"h":{"$b":"!"}}'
#: A JSON-form record whose tagged bytes are not base64 (what the old codec wrote for a user's
#: ``{"$b": "!"}``).
JUNK = b"\x00" + struct.pack(">I", len(_META)) + _META


def _store_key(queue: str) -> str:
    return f"/\x1f{queue}"


async def _spoil(brokers: BrokerFactory, key: str, index: int) -> int:
    """Overwrite the ``index``-th stored record under ``key`` with unreadable bytes."""
    assert brokers.store is not None and brokers.broker is not None
    await brokers.broker.sync()
    seq = brokers.store.load(key, -1, 1000)[index][0]
    brokers.store.replace(key, seq, JUNK)
    await brokers.broker.sync()
    return seq


async def test_an_unreadable_record_is_quarantined_and_recovery_goes_on(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    for i in range(5):
        pub(b, "", "q", str(i))
    seq = await _spoil(brokers, _store_key("q"), 2)
    b = await brokers.restart()
    assert drain(b, b.open_session(), "q") == [b"0", b"1", b"3", b"4"]
    await b.sync()
    [bad] = b.quarantined()
    assert (bad.vhost, bad.queue, bad.seq, bad.data) == ("/", "q", seq, JUNK)
    assert "unreadable record" in bad.reason
    assert b.statistics().quarantined == 1
    b = await brokers.restart()  # moved aside for good: not read again, not lost either
    assert drain(b, b.open_session(), "q") == []
    assert len(b.quarantined()) == 1
    b.drop_quarantined(bad.id)
    await b.sync()
    assert b.quarantined() == []


async def test_an_unreadable_record_beyond_the_window_does_not_stall_paging(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start(queue_window=4)
    b.declare_queue("/", "q")
    for i in range(12):
        pub(b, "", "q", str(i))
    await _spoil(brokers, _store_key("q"), 7)
    b = await brokers.restart(queue_window=4)
    s = b.open_session()
    got = drain(b, s, "q")
    assert got == [str(i).encode() for i in range(12) if i != 7]
    assert b.get_queue("/", "q").ready_count == 0
    await b.sync()
    assert len(b.quarantined()) == 1


async def test_browsing_over_an_unreadable_record_moves_it_aside(brokers: BrokerFactory) -> None:
    b = brokers.start(queue_window=2)
    b.declare_queue("/", "q")
    for i in range(6):
        pub(b, "", "q", str(i))
    await b.sync()
    await _spoil(brokers, _store_key("q"), 4)
    queue = b.get_queue("/", "q")
    assert [e.record.message.body for e in queue.ready.browse(10)] == [b"0", b"1", b"2", b"3", b"5"]
    assert queue.ready_count == 5
    assert drain(b, b.open_session(), "q") == [b"0", b"1", b"2", b"3", b"5"]


async def test_an_unreadable_delayed_record_is_quarantined_and_the_rest_fire(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q")
    for i in range(3):
        b.publish("/", "", Message(str(i).encode(), "q"), delay_ms=1000 * (i + 1))
    assert brokers.store is not None
    await b.sync()
    [key] = [k for k in brokers.store.queues() if is_delayed_key(k)]
    await _spoil(brokers, key, 1)
    b = await brokers.restart()
    await b.sync()
    assert len(b.quarantined()) == 1
    brokers.clock.advance(10)
    assert drain(b, b.open_session(), "q") == [b"0", b"2"]


async def test_a_timestamp_beside_a_tag_shaped_table_survives_a_restart(
    brokers: BrokerFactory,
) -> None:
    """The record that used to make a data directory unopenable."""
    b = brokers.start()
    b.declare_queue("/", "q")
    headers = {"at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "t": {"$b": "a"}}
    b.publish("/", "", Message(b"x", "q", headers=headers))
    b = await brokers.restart()
    d = b.get(b.open_session(), "q")
    assert d is not None and d.message.headers == headers
    assert b.quarantined() == []


async def test_damaged_definition_rows_are_quarantined_and_the_broker_starts(
    brokers: BrokerFactory,
) -> None:
    """A definitions row that cannot be read (a damaged file, another version) is moved to
    the quarantine and logged, never a start-up traceback; a queue whose row is damaged comes
    back as a plain durable queue with its messages."""
    b = brokers.start()
    b.declare_exchange("/", "x", "topic")
    b.declare_queue("/", "q", arguments={"x-max-length": 100})
    b.declare_queue("/", "other")
    b.bind("/", "x", "other", "a.*")
    for i in range(3):
        pub(b, "", "q", f"m{i}")
    await b.sync()
    store = brokers.store
    assert store is not None
    store.put_definition("queue", "/\x1fq", b"{not json")
    store.put_definition("exchange", "/\x1fx", b'{"kind": 5}')
    store.put_definition("stream-reader", "junk", b"[]")
    b = await brokers.restart()
    assert drain(b, b.open_session(), "q") == [b"m0", b"m1", b"m2"]
    assert b.queue_exists("/", "other")
    await b.sync()
    quarantined = sorted(r.queue for r in b.quarantined())
    assert quarantined == ["definition exchange 'x' in vhost '/'",
                           "definition queue 'q' in vhost '/'",
                           "definition stream-reader 'junk'"]
    b = await brokers.restart()  # the plain queue's row was written anew: still there
    assert b.queue_exists("/", "q")


async def test_a_stored_message_whose_headers_no_face_can_deliver_is_quarantined(
    brokers: BrokerFactory,
) -> None:
    """A header with a lone surrogate, stored before such input was refused at the edge,
    closed every AMQP consumer of its queue on delivery; after a restart it is moved aside
    and the messages behind it are delivered."""
    b = brokers.start()
    b.declare_queue("/", "q")
    pub(b, "", "q", "before")
    b.publish("/", "", Message(b"poison", "q", headers={"a": "\ud800"}))
    pub(b, "", "q", "after")
    await b.sync()
    b = await brokers.restart()
    assert drain(b, b.open_session(), "q") == [b"before", b"after"]
    await b.sync()
    [bad] = b.quarantined()
    assert "surrogate" in bad.reason
