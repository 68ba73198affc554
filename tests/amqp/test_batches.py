"""The batch extension: many messages in one publish, one confirm; a consumer's deliveries of a
loop turn in one ``basic.deliver``. The packed format reads back what the single-frame codec
reads; a plain client (pika) can use it; what is not taken comes back named by position;
hostile batches are a channel error and the server goes on serving."""

from __future__ import annotations

import uuid

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings import content_header
from tidings import message_batches as batches
from tidings.amqp import codec
from tidings.message import Message

from ..serverproc import ServerProcess
from .test_codec import messages
from .test_security_and_flow import params, tidings_cli

CONTROL = "amq.tidings.control"
route_keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


def read_alone(message: Message, routing_key: str = "", exchange: str = "") -> Message:
    """``message`` as the server reads it from a publish of its own."""
    frame = content_header.encode_header_frame(1, message, None, len(message.body))
    out = codec.decode_content_header(frame).message
    out.body, out.routing_key, out.exchange = message.body, routing_key, exchange
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(route_keys, messages()), max_size=8))
def test_a_packed_publish_reads_back_as_each_message_alone(
        entries: list[tuple[str, Message]]) -> None:
    got = batches.unpack_publishes(batches.pack_publishes(entries))
    assert got == [(rk, read_alone(m, rk)) for rk, m in entries]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), st.booleans(), messages(),
                          st.one_of(st.none(), st.integers(1, 50))), max_size=8))
def test_packed_deliveries_read_back_with_their_tags(
        entries: list[tuple[int, bool, Message, int | None]]) -> None:
    packed = batches.pack_deliveries(
        [(tag, again, m, {"x-delivery-count": n} if n else None) for tag, again, m, n in entries])
    got = batches.unpack_deliveries(packed)
    assert [(tag, again) for tag, again, _ in got] == [(t, r) for t, r, _, _ in entries]
    for (_, _, message), (_, _, sent, count) in zip(got, entries, strict=True):
        expected = read_alone(sent, sent.routing_key, sent.exchange)
        if count:
            expected.headers = {**(expected.headers or {}), "x-delivery-count": count}
        assert message == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(route_keys, messages()), min_size=1, max_size=4), st.data())
def test_a_cut_batch_is_refused_whole(entries: list[tuple[str, Message]],
                                      data: st.DataObject) -> None:
    packed = batches.pack_publishes(entries)
    cut = data.draw(st.integers(1, len(packed) - 1))
    ends = set()
    pos = 0
    for rk, m in entries:  # where entries end: a cut there is a shorter valid batch
        pos += len(batches.pack_publishes([(rk, m)]))
        ends.add(pos)
    if cut in ends:
        return
    with pytest.raises(ValueError):
        batches.unpack_publishes(packed[:cut])


def _batch(channel: pika.adapters.blocking_connection.BlockingChannel, exchange: str,
           entries: list[tuple[str, bytes]], mandatory: bool = True) -> None:
    body = batches.pack_publishes([(rk, Message(b)) for rk, b in entries])
    channel.basic_publish(CONTROL, batches.PUBLISH_BATCH, body, pika.BasicProperties(
        message_id=uuid.uuid4().hex,
        headers={batches.EXCHANGE_HEADER: exchange, batches.MANDATORY_HEADER: mandatory}))


def test_a_batch_from_a_plain_client_is_published_and_confirmed_once(
        server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        q = f"batch-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(q, durable=True)
        _batch(ch, "", [(q, f"m{i}".encode()) for i in range(50)])
        assert ch.queue_declare(q, passive=True).method.message_count == 50
        got = [ch.basic_get(q, auto_ack=True)[2] for _ in range(50)]
        assert got == [f"m{i}".encode() for i in range(50)]


def test_messages_not_taken_come_back_named_by_position(server: ServerProcess) -> None:
    returns: list[tuple[object, pika.BasicProperties]] = []
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.add_on_return_callback(lambda _c, method, props, _b: returns.append((method, props)))
        q = f"batch-{uuid.uuid4().hex[:8]}"
        full = f"full-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(q)
        ch.queue_declare(full, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            _batch(ch, "", [(q, b"a"), ("no-such-queue", b"b"), (full, b"c"), (full, b"d"),
                            (q, b"e")])
        conn.process_data_events(time_limit=0.2)
        assert ch.queue_declare(q, passive=True).method.message_count == 2
        assert ch.queue_declare(full, passive=True).method.message_count == 1
    headers = returns[0][1].headers
    assert headers[batches.RETURNED_HEADER] == [1]
    assert headers[batches.REFUSED_HEADER] == [3]


@pytest.mark.parametrize(("body", "why"), [
    (b"\x05abc", "cut in a name"),
    (b"\x01q\x02\x00\x00\x00\x00\xff" + b"x" * 300, "a frame that runs past the batch"),
    (batches.pack_publishes([("q", Message(b"x" * 10))])[:-3], "a body cut short"),
])
def test_a_malformed_batch_closes_the_channel_and_the_server_goes_on(
        server: ServerProcess, body: bytes, why: str) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.basic_publish(CONTROL, batches.PUBLISH_BATCH, body,
                         pika.BasicProperties(headers={batches.EXCHANGE_HEADER: ""}))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("", exclusive=True)
        assert info.value.reply_code == 406, why
        assert "publish-batch" in info.value.reply_text
        ch = conn.channel()  # the connection and the server serve on
        assert ch.queue_declare("", exclusive=True).method.queue


def test_a_batch_needs_write_permission_on_its_exchange(server: ServerProcess) -> None:
    data = server.data_dir
    assert tidings_cli(data, "users", "add", "walter", "secret").returncode == 0
    assert tidings_cli(data, "users", "set-permissions", "walter", ".*", "^walter-.*",
                       ".*").returncode == 0
    with pika.BlockingConnection(params(server)) as conn:
        q = f"batch-{uuid.uuid4().hex[:8]}"
        conn.channel().queue_declare(q)
    walter = pika.PlainCredentials("walter", "secret")
    with pika.BlockingConnection(params(server, credentials=walter)) as conn:
        ch = conn.channel()
        _batch(ch, "", [(q, b"a"), (q, b"b")])  # the default exchange: not his to write
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("walter-x")
        assert info.value.reply_code == 403
    with pika.BlockingConnection(params(server)) as conn:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


def test_a_batch_consumer_gets_packed_deliveries_to_settle_one_by_one(
        server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        q = f"batch-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(q)
        for i in range(30):
            ch.basic_publish("", q, f"m{i}".encode())
        ch.basic_qos(prefetch_count=10)
        seen: list[tuple[int, bytes, bool]] = []
        for _method, props, body in ch.consume(q, arguments={batches.BATCH_ARGUMENT: True},
                                               inactivity_timeout=1):
            if props is None:
                break
            entries = batches.unpack_deliveries(body)
            assert props.headers[batches.BATCH_HEADER] == len(entries) <= 10
            for tag, redelivered, message in entries:
                seen.append((tag, message.body, redelivered))
                if message.body == b"m3" and not redelivered:
                    ch.basic_nack(tag, requeue=True)
                else:
                    ch.basic_ack(tag)
        ch.cancel()
        assert sorted(b for b, _ in {(b, r) for _, b, r in seen if not r}) == \
            sorted(f"m{i}".encode() for i in range(30))
        assert [(b, r) for _, b, r in seen if r] == [(b"m3", True)]  # nacked: delivered again
        assert len(seen) == 31
        assert len({t for t, _, _ in seen}) == 31  # every delivery has its own tag
        assert ch.queue_declare(q, passive=True).method.message_count == 0


class _Channel:
    """An ExtensionChannel that records what the batch operation asks of it."""

    vhost = "/"
    broker = None

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.waiting: list[object] = []
        self.confirmed: list[bool] = []

    def check(self, permission: str, kind: str, name: str) -> None: ...

    def send_content(self, method: object, message: Message, extra: object = None) -> None:
        self.sent.append(message.headers)

    def confirm(self, ok: bool) -> None:
        self.confirmed.append(ok)

    def after_durable(self, action: object) -> None:
        self.waiting.append(action)

    def publish_batch(self, exchange: str, entries: list[tuple[str, Message]],
                      mandatory: bool) -> tuple[list[int], list[int]]:
        return [1], []


def test_what_was_not_taken_is_reported_only_once_the_rest_is_durable() -> None:
    """A client may count every message the return does not name as durable the moment the
    return arrives (aiormq resolves the publish then), so it must not come earlier."""
    from pamqp import commands

    from tidings.amqp import extensions

    channel = _Channel()
    body = batches.pack_publishes([("q", Message(b"a")), ("missing", Message(b"b"))])
    extensions.control(channel, Message(body, message_id="b1", headers={  # type: ignore[arg-type]
        batches.EXCHANGE_HEADER: "", batches.MANDATORY_HEADER: True}),
        commands.Basic.Publish(exchange=CONTROL, routing_key=batches.PUBLISH_BATCH))
    assert channel.sent == [] and channel.confirmed == [True]
    (durable,) = channel.waiting
    durable()  # type: ignore[operator]
    assert channel.sent == [{batches.RETURNED_HEADER: [1], batches.REFUSED_HEADER: []}]


def test_deliveries_gathered_before_a_cancel_are_sent_before_its_ok(
        server: ServerProcess) -> None:
    """A publish and a cancel read in one go: the batch delivered for the publish comes
    before cancel-ok (after it, a client has forgotten the consumer and drops it unacked)."""
    from pamqp import body as pbody
    from pamqp import commands, frame
    from pamqp import header as pheader

    from .raw import RawClient

    raw = RawClient(server.port, heartbeat_s=0)
    try:
        raw.open_channel(1)
        q = f"batch-{uuid.uuid4().hex[:8]}"
        raw.send(1, commands.Queue.Declare(queue=q))
        raw.expect(commands.Queue.DeclareOk)
        raw.send(1, commands.Basic.Consume(queue=q, consumer_tag="c", no_ack=True,
                                           arguments={batches.BATCH_ARGUMENT: True}))
        raw.expect(commands.Basic.ConsumeOk)
        raw.sock.sendall(b"".join(frame.marshal(f, 1) for f in (  # type: ignore[arg-type]
            commands.Basic.Publish(exchange="", routing_key=q),
            pheader.ContentHeader(0, 2, commands.Basic.Properties()),
            pbody.ContentBody(b"hi"), commands.Basic.Cancel("c"))))
        seen: list[str] = []
        while "CancelOk" not in seen:
            item = raw.reader.next_frame()
            if item is None:
                raw.reader.feed(raw.sock.recv(65536))
            elif isinstance(item[1], commands.Basic.Deliver | commands.Basic.CancelOk):
                seen.append(type(item[1]).__name__)
        assert seen == ["Deliver", "CancelOk"]
    finally:
        raw.sock.close()
