"""pika (blocking and asyncio adapters) against a real tidings serve."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid

import pika
import pytest
from pika.adapters.asyncio_connection import AsyncioConnection

from ..serverproc import ServerProcess


def params(server: ServerProcess, **kw: object) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", server.port, **kw)  # type: ignore[arg-type]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_blocking_publish_with_confirms_consume_and_ack(server: ServerProcess) -> None:
    queue = unique("pika")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for i in range(50):
            ch.basic_publish("", queue, f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2, headers={"i": i}))
        got: list[bytes] = []

        def on_message(c: object, method: object, props: pika.BasicProperties,
                       body: bytes) -> None:
            got.append(body)
            ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
            if len(got) == 50:
                ch.stop_consuming()

        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(queue, on_message)
        ch.start_consuming()
        assert got == [f"m{i}".encode() for i in range(50)]


def test_mandatory_unroutable_is_returned(server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish("amq.direct", unique("nowhere"), b"x", mandatory=True)


def test_errors_close_the_channel_with_rabbitmq_codes(server: ServerProcess) -> None:
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("orders-missing", passive=True)
        assert info.value.reply_code == 404
        assert info.value.reply_text == "NOT_FOUND - no queue 'orders-missing' in vhost '/'"
        ch = conn.channel()
        ch.exchange_declare(unique("x"), "direct")
        name = unique("x")
        ch.exchange_declare(name, "direct")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare(name, "fanout")
        assert info.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_ack(99)
            ch.queue_declare(unique("after"))  # the close arrives with the next round trip
        assert info.value.reply_code == 406 and "unknown delivery tag 99" in info.value.reply_text
        assert conn.is_open  # the connection keeps serving


def test_wrong_password_is_access_refused(server: ServerProcess) -> None:
    creds = pika.PlainCredentials("guest", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params(server, credentials=creds))
    assert "ACCESS_REFUSED" in str(info.value)


def test_nack_requeue_redelivers_and_reject_drops(server: ServerProcess) -> None:
    queue = unique("nack")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"again")
        method, _, _ = ch.basic_get(queue)
        ch.basic_nack(method.delivery_tag, requeue=True)
        method, props, body = ch.basic_get(queue)
        assert body == b"again" and method.redelivered
        assert props.headers == {"x-delivery-count": 1}
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert ch.basic_get(queue) == (None, None, None)


def test_large_body_is_split_and_joined_at_frame_max(server: ServerProcess) -> None:
    queue = unique("big")
    payload = bytes(range(256)) * 4000  # about 1 MB: many body frames each way
    with pika.BlockingConnection(params(server, frame_max=8192)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.basic_publish("", queue, payload)
        _, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == payload


def test_tx_commit_and_rollback(server: ServerProcess) -> None:
    queue = unique("tx")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.tx_select()
        ch.basic_publish("", queue, b"rolled back")
        ch.tx_rollback()
        ch.basic_publish("", queue, b"committed")
        ch.tx_commit()
        _, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"committed"
        assert ch.basic_get(queue) == (None, None, None)


def test_deleting_a_queue_cancels_its_consumer(server: ServerProcess) -> None:
    queue = unique("cancel")
    cancelled: list[object] = []
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.add_on_cancel_callback(cancelled.append)
        ch.basic_consume(queue, lambda *a: None)
        other = conn.channel()
        other.queue_delete(queue)
        conn.process_data_events(time_limit=0.5)
        assert cancelled


def test_direct_reply_to_round_trips_and_can_be_consumed_again(server: ServerProcess) -> None:
    """A reply to ``amq.rabbitmq.reply-to`` reaches the requester; the pseudo-queue can be
    consumed again after a cancel, as RabbitMQ allows and as FastStream's request() does once
    per call (it worked once in 50 calls: the second consume on the channel was a 404)."""
    service_queue = unique("rpc")
    with pika.BlockingConnection(params(server)) as conn:
        server_ch = conn.channel()
        server_ch.queue_declare(service_queue)
        client_ch = conn.channel()
        replies: list[bytes] = []
        for i in range(3):
            tag = client_ch.basic_consume("amq.rabbitmq.reply-to",
                                          lambda c, m, p, b: replies.append(b), auto_ack=True)
            client_ch.basic_publish("", service_queue, str(i).encode(),
                                    pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
            _, props, body = server_ch.basic_get(service_queue, auto_ack=True)
            assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
            server_ch.basic_publish("", props.reply_to, body + b"!")
            deadline = time.monotonic() + 10
            while len(replies) <= i and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
            client_ch.basic_cancel(tag)
        assert replies == [b"0!", b"1!", b"2!"]
        client_ch.basic_publish("", service_queue, b"x",
                                pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
        deadline = time.monotonic() + 10
        while client_ch.is_open and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert client_ch.is_closed  # no reply consumer now: 406, as RabbitMQ says


async def test_pika_asyncio_adapter(server: ServerProcess) -> None:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[AsyncioConnection] = loop.create_future()
    closed: asyncio.Future[object] = loop.create_future()
    conn = AsyncioConnection(params(server), on_open_callback=opened.set_result,
                             on_open_error_callback=lambda c, e: opened.set_exception(e),
                             on_close_callback=lambda c, e: closed.set_result(e),
                             custom_ioloop=loop)
    connection = await asyncio.wait_for(opened, 10)
    channel_ready: asyncio.Future[object] = loop.create_future()
    connection.channel(on_open_callback=channel_ready.set_result)
    ch = await asyncio.wait_for(channel_ready, 10)
    queue = unique("aio")
    declared: asyncio.Future[object] = loop.create_future()
    ch.queue_declare(queue, callback=declared.set_result)  # type: ignore[attr-defined]
    await asyncio.wait_for(declared, 10)
    got: asyncio.Future[bytes] = loop.create_future()
    ch.basic_consume(queue, lambda c, m, p, b: got.set_result(b), auto_ack=True)  # type: ignore[attr-defined]
    ch.basic_publish("", queue, b"over asyncio")  # type: ignore[attr-defined]
    assert await asyncio.wait_for(got, 10) == b"over asyncio"
    conn.close()
    await asyncio.wait_for(closed, 10)  # the socket is closed before the loop goes away


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"AMQP\x00\x00\x09\x01" + bytes(range(256)) * 4,
    b"AMQP\x00\x00\x09\x01\x01\x00\x00\xff\xff\xff\xff" + b"\x00" * 64,
])
def test_garbage_from_one_client_closes_it_and_others_carry_on(server: ServerProcess,
                                                               garbage: bytes) -> None:
    import socket

    queue = unique("survivor")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as bad:
            bad.sendall(garbage)
            received = b""
            while chunk := bad.recv(65536):  # the server answers and hangs up: no hang
                received += chunk
        assert received  # our protocol header, or a connection.close with a reply code
        ch.basic_publish("", queue, b"still serving")
        _, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"still serving"


def test_queue_arguments_over_the_wire_ttl_dead_letters_priorities(server: ServerProcess) -> None:
    work, dead, prio = unique("work"), unique("dead"), unique("prio")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.queue_declare(dead)
        ch.queue_declare(work, arguments={"x-dead-letter-exchange": "",
                                          "x-dead-letter-routing-key": dead,
                                          "x-message-ttl": 50})
        ch.basic_publish("", work, b"expires", pika.BasicProperties(headers={"k": [1, "a"]}))
        ch.basic_publish("", work, b"rejected")
        conn.sleep(0.3)  # the first one expires at the head
        # x-message-ttl took "expires"; "rejected" expired too: both are dead letters now
        bodies, reasons = [], []
        while True:
            method, props, body = ch.basic_get(dead, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
            death = props.headers["x-death"][0]
            reasons.append((death["reason"], death["queue"], death["count"]))
            assert death["routing-keys"] == [work]
            # an AMQP timestamp, as RabbitMQ sends it: pika decodes it to a datetime
            assert isinstance(death["time"], datetime.datetime)
            assert abs(death["time"].replace(tzinfo=datetime.UTC).timestamp() - time.time()) < 60
        assert bodies == [b"expires", b"rejected"]
        assert reasons == [("expired", work, 1), ("expired", work, 1)]

        ch.queue_declare(prio, arguments={"x-max-priority": 10})
        for body, priority in (("low", 1), ("high", 9), ("mid", 5)):
            ch.basic_publish("", prio, body.encode(), pika.BasicProperties(priority=priority))
        got = [ch.basic_get(prio, auto_ack=True)[2] for _ in range(3)]
        assert got == [b"high", b"mid", b"low"]


def test_delayed_message_exchange_as_the_rabbitmq_plugin_defines_it(
    server: ServerProcess,
) -> None:
    ex, queue = unique("delayed"), unique("later")
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
        ch.queue_declare(queue)
        ch.queue_bind(queue, ex, "k")
        ch.basic_publish(ex, "k", b"in 300 ms", pika.BasicProperties(headers={"x-delay": 300}))
        ch.basic_publish(ex, "k", b"now")
        assert ch.basic_get(queue, auto_ack=True)[2] == b"now"
        assert ch.basic_get(queue, auto_ack=True)[2] is None
        conn.sleep(0.5)
        assert ch.basic_get(queue, auto_ack=True)[2] == b"in 300 ms"
