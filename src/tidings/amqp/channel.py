"""One AMQP channel on the server: methods in, broker calls, replies out.

Each incoming method is looked up in ``HANDLERS`` (method class → handler); a handler calls
the broker and queues the reply on the sans-IO connection. Errors are raised as
:class:`TidingsError` and turned into channel.close or connection.close by the driver. Names
follow the AMQP spec (``delivery_tag``, ``consumer_tag``, ``prefetch_count``).

Publisher confirms are counted in the connection's :class:`~tidings.amqp.confirms.ConfirmBook`
and sent by the link once the broker's group commit that holds them is durable; transactions
(``tx``) buffer publishes and settlements until commit.

The channel knows its connection only as :class:`ChannelLink`, the few calls it makes (the
link in ``amqp/link.py`` satisfies it), so nothing here imports the link back.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from pamqp import commands
from pamqp.base import Frame as Method

from tidings import message_batches as batches
from tidings.amqp import extensions
from tidings.amqp import frames as wire
from tidings.amqp import states as st
from tidings.amqp.confirms import ConfirmBook
from tidings.amqp.connection import ContentReceived, ServerConnection
from tidings.errors import (
    InternalError,
    NotFoundError,
    NotImplementedByServerError,
    PreconditionFailedError,
    TidingsError,
)
from tidings.message import Message
from tidings.routing.front_door import Consumer, Delivery, FrontDoor

B, Q, E, Ch = commands.Basic, commands.Queue, commands.Exchange, commands.Channel
Tx, Confirm = commands.Tx, commands.Confirm

REPLY_TO = "amq.rabbitmq.reply-to"


class ChannelLink(Protocol):
    """What a channel uses of its connection."""

    conn: ServerConnection
    broker: FrontDoor
    confirms: ConfirmBook
    connection_id: str
    username: str
    vhost: str

    def channel_error(self, number: int, error: TidingsError, method: Any) -> None: ...

    def check_permission(self, permission: str, kind: str, name: str) -> None: ...

    def capability(self, name: str) -> bool: ...

    def delivered(self) -> None: ...

    def flush_soon(self) -> None: ...

    def after_durable(self, action: Callable[[], None], *,
                      on_failure: Callable[[BaseException], None] | None = None) -> None: ...

    def before_flush(self, action: Callable[[], None]) -> None: ...

    def write_gathered(self) -> None: ...


class AmqpChannel:
    def __init__(self, link: ChannelLink, number: int) -> None:
        self.link, self.number = link, number
        self.broker = link.broker
        self.vhost = link.vhost
        self.session = self.broker.open_session(link.vhost, link.connection_id)
        self.session.on_error = self._session_failed
        self.consumers: dict[str, Consumer] = {}
        self.prefetch_count = 0
        #: In confirm mode (its publishes are counted in the link's ConfirmBook).
        self.confirming = False
        #: Publishing mode: plain, confirms or transactions (``amqp/states.py``).
        self.mode = st.PLAIN
        self.tx: list[Callable[[], None]] | None = None
        self.last_queue = ""
        self.reply_queue: str | None = None

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, method: Method) -> None:
        handler = HANDLERS.get(type(method))
        if handler is None:
            raise NotImplementedByServerError(f"method {method.name} is not implemented",
                                method=type(method))
        handler(self, method)

    def reply(self, method: Method, nowait: bool = False) -> None:
        if not nowait:
            self.link.conn.send_method(self.number, method)

    def send_content(self, method: Method, message: Message,
                     extra: dict[str, Any] | None = None) -> None:
        """A method with content (get-ok, return, deliver) to the peer on this channel."""
        self.link.conn.send_content(self.number, method, message, extra)

    def send_copies(self, consumer_tag: str, messages: list[Message]) -> None:
        """Deliver ``messages`` to ``consumer_tag`` as no-ack copies (a browse)."""
        conn, session = self.link.conn, self.session
        for message in messages:
            tag, session.next_tag = session.next_tag, session.next_tag + 1
            conn.send_delivery(self.number, consumer_tag, tag, False, message, None)
        self.link.flush_soon()

    def after_durable(self, action: Callable[[], None]) -> None:
        """Run ``action`` once what this channel did so far is durable (never if the store
        failed)."""
        self.link.after_durable(action)

    def extend(self, delivery_tag: int) -> None:
        """Restart the consumer-timeout clock of a delivery on this channel."""
        self.session.extend(delivery_tag)

    def close(self) -> None:
        """Release everything: consumers are cancelled, unacked messages requeued."""
        self.session.close()
        self.consumers.clear()
        self.link.confirms.forget(self.number)

    def _session_failed(self, error: Exception) -> None:
        if isinstance(error, TidingsError):
            self.link.channel_error(self.number, error, None)

    def _queue_name(self, name: str) -> str:
        if name:
            return name
        if not self.last_queue:
            raise NotFoundError("no previously declared queue on this channel")
        return self.last_queue

    def check(self, permission: str, kind: str, name: str) -> None:
        self.link.check_permission(permission, kind, name)

    # -- channel ---------------------------------------------------------------------------

    def flow(self, m: Ch.Flow) -> None:
        self.session.flow_active = bool(m.active)
        self.reply(Ch.FlowOk(m.active))
        if m.active:
            self.session.dispatch()

    # -- exchanges -------------------------------------------------------------------------

    def exchange_declare(self, m: E.Declare) -> None:
        if not m.passive:
            self.check("configure", "exchange", m.exchange)
        self.broker.declare_exchange(
            self.vhost, m.exchange, m.exchange_type, durable=m.durable,
            auto_delete=m.auto_delete, internal=m.internal, arguments=dict(m.arguments or {}),
            passive=m.passive,
        )
        self.reply(E.DeclareOk(), m.nowait)

    def exchange_delete(self, m: E.Delete) -> None:
        self.check("configure", "exchange", m.exchange)
        with contextlib.suppress(NotFoundError):  # RabbitMQ: deleting nothing succeeds
            self.broker.delete_exchange(self.vhost, m.exchange, if_unused=m.if_unused)
        self.reply(E.DeleteOk(), m.nowait)

    def exchange_bind(self, m: E.Bind) -> None:
        self.check("write", "exchange", m.destination)
        self.check("read", "exchange", m.source)
        self.broker.bind(self.vhost, m.source, m.destination, m.routing_key,
                         dict(m.arguments or {}), to_exchange=True)
        self.reply(E.BindOk(), m.nowait)

    def exchange_unbind(self, m: E.Unbind) -> None:
        self.check("write", "exchange", m.destination)
        self.check("read", "exchange", m.source)
        self.broker.unbind(self.vhost, m.source, m.destination, m.routing_key,
                           dict(m.arguments or {}), to_exchange=True)
        self.reply(E.UnbindOk(), m.nowait)

    # -- queues ----------------------------------------------------------------------------

    def queue_declare(self, m: Q.Declare) -> None:
        if m.queue == REPLY_TO and m.passive:
            self.reply(Q.DeclareOk(REPLY_TO, 0, 0), m.nowait)
            return
        name, arguments = m.queue, dict(m.arguments or {})
        if not m.passive:
            # A server-named queue is checked under the name it will get, as in RabbitMQ.
            name = name or self.broker.new_queue_name()
            self.check("configure", "queue", name)
            dlx = arguments.get("x-dead-letter-exchange")
            if isinstance(dlx, str):  # its dead letters are published there
                self.check("read", "queue", name)
                self.check("write", "exchange", dlx)
        queue = self.broker.declare_queue(
            self.vhost, name, durable=m.durable, exclusive=m.exclusive,
            auto_delete=m.auto_delete, arguments=arguments, passive=m.passive,
            connection_id=self.link.connection_id, reserved_ok=not m.queue,
        )
        self.last_queue = queue.name
        self.reply(wire.DeclareOk(queue.name, queue.ready, queue.consumers),
                   m.nowait)

    def queue_bind(self, m: Q.Bind) -> None:
        name = self._queue_name(m.queue)
        self.check("write", "queue", name)
        self.check("read", "exchange", m.exchange)
        self.broker.bind(self.vhost, m.exchange, name, m.routing_key, dict(m.arguments or {}))
        self.reply(Q.BindOk(), m.nowait)

    def queue_unbind(self, m: Q.Unbind) -> None:
        name = self._queue_name(m.queue)
        self.check("write", "queue", name)
        self.check("read", "exchange", m.exchange)
        self.broker.unbind(self.vhost, m.exchange, name, m.routing_key, dict(m.arguments or {}))
        self.reply(Q.UnbindOk())

    def queue_purge(self, m: Q.Purge) -> None:
        name = self._queue_name(m.queue)
        self.check("read", "queue", name)
        count = self.broker.purge_queue(self.vhost, name, self.link.connection_id)
        self.reply(Q.PurgeOk(count), m.nowait)

    def queue_delete(self, m: Q.Delete) -> None:
        name = self._queue_name(m.queue)
        self.check("configure", "queue", name)
        try:
            count = self.broker.delete_queue(self.vhost, name, if_unused=m.if_unused,
                                             if_empty=m.if_empty,
                                             connection_id=self.link.connection_id)
        except NotFoundError:
            count = 0  # RabbitMQ: deleting a missing queue succeeds
        self.reply(Q.DeleteOk(count), m.nowait)

    # -- basic -----------------------------------------------------------------------------

    def basic_qos(self, m: B.Qos) -> None:
        # RabbitMQ's reading: global=false limits each new consumer, global=true the channel.
        if m.global_:
            self.session.prefetch_count = m.prefetch_count
            self.session.dispatch()
        else:
            self.prefetch_count = m.prefetch_count
        self.reply(B.QosOk())

    def basic_consume(self, m: B.Consume) -> None:
        name = self._queue_name(m.queue)
        if name == REPLY_TO:
            name = self._reply_queue(m)
        self.check("read", "queue", name)
        tag = m.consumer_tag or f"amq.ctag-{secrets.token_urlsafe(16)}"
        if m.arguments and extensions.BROWSE_ARGUMENT in m.arguments:
            extensions.browse(self, m, name, tag)
            return
        arguments = dict(m.arguments or {})
        deliver = self._batch_deliverer(tag) if arguments.pop(batches.BATCH_ARGUMENT, False) \
            else self._deliverer(tag)
        consumer = self.broker.consume(
            self.session, name, deliver, prefetch_count=self.prefetch_count,
            no_ack=m.no_ack, exclusive=m.exclusive, consumer_tag=tag,
            arguments=arguments, dispatch=False,
        )
        consumer.on_cancel = self._cancelled_by_server
        self.consumers[tag] = consumer
        self.reply(B.ConsumeOk(tag), m.nowait)
        consumer.start()

    def _reply_queue(self, m: B.Consume) -> str:
        if not m.no_ack:
            raise PreconditionFailedError("reply consumer cannot acknowledge")
        if not self._has_reply_queue():  # the first, or again after a cancel (auto-delete)
            # the same name again: replies addressed to this channel before still reach it
            name = self.reply_queue or f"{REPLY_TO}.{secrets.token_urlsafe(18)}"
            self.broker.declare_queue(self.vhost, name, durable=False, exclusive=True,
                                      auto_delete=True, connection_id=self.link.connection_id,
                                      reserved_ok=True)
            self.reply_queue = name
        assert self.reply_queue is not None
        return self.reply_queue

    def _has_reply_queue(self) -> bool:
        return self.reply_queue is not None and \
            self.broker.queue_exists(self.vhost, self.reply_queue)

    def _deliverer(self, consumer_tag: str) -> Callable[[Delivery], None]:
        conn, number, link = self.link.conn, self.number, self.link

        def deliver(d: Delivery) -> None:
            extra = {"x-delivery-count": d.delivery_count} if d.delivery_count else None
            conn.send_delivery(number, consumer_tag, d.delivery_tag, d.redelivered, d.message,
                               extra)
            link.delivered()

        return deliver

    def _batch_deliverer(self, consumer_tag: str) -> Callable[[Delivery], None]:
        link = self.link
        gathered = extensions.BatchDeliveries(link.conn.send_delivery, self.number, consumer_tag)

        def deliver(d: Delivery) -> None:
            extra = {"x-delivery-count": d.delivery_count} if d.delivery_count else None
            if gathered.add(d.delivery_tag, d.redelivered, d.message, extra):
                link.before_flush(gathered.write)
            link.delivered()

        return deliver

    def _cancelled_by_server(self, consumer_tag: str) -> None:
        self.consumers.pop(consumer_tag, None)
        if self.link.capability("consumer_cancel_notify"):
            self.link.conn.send_method(self.number, B.Cancel(consumer_tag, True))
            self.link.flush_soon()

    def basic_cancel(self, m: B.Cancel) -> None:
        self.consumers.pop(m.consumer_tag, None)
        self.broker.cancel(self.session, m.consumer_tag)
        self.link.write_gathered()  # deliveries made before the cancel go before its ok
        self.reply(B.CancelOk(m.consumer_tag), m.nowait)

    def basic_get(self, m: B.Get) -> None:
        name = self._queue_name(m.queue)
        self.check("read", "queue", name)
        d = self.broker.get(self.session, name, no_ack=m.no_ack)
        if d is None:
            self.reply(B.GetEmpty())
            return
        msg = d.message
        extra = {"x-delivery-count": d.delivery_count} if d.delivery_count else None
        self.send_content(wire.GetOk(d.delivery_tag, d.redelivered, msg.exchange,
                                     msg.routing_key, d.message_count), msg, extra)

    def publish(self, event: ContentReceived) -> None:
        m = event.method
        if m.immediate:
            raise NotImplementedByServerError("immediate=true", method=B.Publish)
        message = event.message
        if m.exchange == extensions.CONTROL_EXCHANGE:  # an operation; it checks its own rights
            extensions.control(self, message, m)
            return
        self.check("write", "exchange", m.exchange)
        self.admit(message)
        if self.tx is not None:
            self.tx.append(lambda: self._publish(message, m))
            return
        self._publish(message, m)

    def admit(self, message: Message) -> None:
        """What every publish is checked for beyond the exchange's write permission."""
        if message.user_id is not None and message.user_id != self.link.username:
            raise PreconditionFailedError(
                f"user_id property set to '{message.user_id}' but authenticated user was "
                f"'{self.link.username}'"
            )
        if message.reply_to == REPLY_TO:
            if not self._has_reply_queue():
                raise PreconditionFailedError("fast reply consumer does not exist")
            message.reply_to = self.reply_queue

    def publish_batch(self, exchange: str, entries: list[tuple[str, Message]],
                      mandatory: bool) -> tuple[list[int], list[int]]:
        """Publish each ``(routing key, message)`` of a batch to ``exchange``, every one
        checked before any is taken; the positions of those returned and refused."""
        if self.tx is not None:
            raise PreconditionFailedError("a batch cannot be published in a transaction")
        self.check("write", "exchange", exchange)
        for _, message in entries:
            self.admit(message)
        returned: list[int] = []
        refused: list[int] = []
        publish, vhost = self.broker.publish, self.vhost
        for i, (_, message) in enumerate(entries):
            result = publish(vhost, exchange, message, mandatory=mandatory)
            if result.returned:
                returned.append(i)
            if result.refused:
                refused.append(i)
        return returned, refused

    def _publish(self, message: Any, m: B.Publish) -> None:
        result = self.broker.publish(self.vhost, m.exchange, message, mandatory=m.mandatory)
        if result.returned:
            self.send_content(wire.Return(312, "NO_ROUTE", m.exchange, m.routing_key), message)
        if self.confirming:  # (a plain publish pays no lookup)
            self.link.confirms.published(self.number, not result.refused)

    def confirm(self, ok: bool) -> None:
        """Count a publish for publisher confirms (acked once the store is durable)."""
        if self.confirming:
            self.link.confirms.published(self.number, ok)

    def _settle(self, action: Callable[[], None]) -> None:
        if self.tx is not None:
            self.tx.append(action)
        else:
            action()

    def basic_ack(self, m: B.Ack) -> None:
        self._settle(lambda: self.session.ack(m.delivery_tag, m.multiple))

    def basic_nack(self, m: B.Nack) -> None:
        self._settle(lambda: self.session.nack(m.delivery_tag, m.multiple, m.requeue))

    def basic_reject(self, m: B.Reject) -> None:
        self._settle(lambda: self.session.reject(m.delivery_tag, m.requeue))

    def basic_recover(self, m: B.Recover | B.RecoverAsync) -> None:
        self.session.recover()
        if isinstance(m, B.Recover):
            self.reply(B.RecoverOk())

    # -- confirm and tx --------------------------------------------------------------------

    def _switch_mode(self, method: type[Method]) -> None:
        """Move the publishing mode (plain, confirms, transactions) by the states table."""
        nxt = st.advance(st.MODE, self.mode, method.name)
        if nxt is None:
            raise PreconditionFailedError(st.MODE_ERRORS[(self.mode, method.name)])
        self.mode = nxt

    def confirm_select(self, m: Confirm.Select) -> None:
        self._switch_mode(Confirm.Select)
        self.confirming = True
        self.link.confirms.select(self.number)
        self.reply(Confirm.SelectOk(), m.nowait)

    def tx_select(self, m: Tx.Select) -> None:
        self._switch_mode(Tx.Select)
        if self.tx is None:
            self.tx = []
        self.reply(Tx.SelectOk())

    def tx_commit(self, m: Tx.Commit) -> None:
        self._switch_mode(Tx.Commit)
        assert self.tx is not None
        actions, self.tx = self.tx, []
        for action in actions:
            action()
        self.link.after_durable(lambda: self.reply(Tx.CommitOk()), on_failure=self._not_durable)

    def _not_durable(self, error: BaseException) -> None:
        """A transaction the store did not keep: never commit-ok; the channel closes."""
        self.link.channel_error(self.number, InternalError(
            f"the transaction is not durable: the store failed ({error})"), None)

    def tx_rollback(self, m: Tx.Rollback) -> None:
        self._switch_mode(Tx.Rollback)
        self.tx = []
        self.reply(Tx.RollbackOk())


HANDLERS: dict[type[Method], Callable[[AmqpChannel, Any], None]] = {
    Ch.Flow: AmqpChannel.flow,
    E.Declare: AmqpChannel.exchange_declare,
    E.Delete: AmqpChannel.exchange_delete,
    E.Bind: AmqpChannel.exchange_bind,
    E.Unbind: AmqpChannel.exchange_unbind,
    Q.Declare: AmqpChannel.queue_declare,
    Q.Bind: AmqpChannel.queue_bind,
    Q.Unbind: AmqpChannel.queue_unbind,
    Q.Purge: AmqpChannel.queue_purge,
    Q.Delete: AmqpChannel.queue_delete,
    B.Qos: AmqpChannel.basic_qos,
    B.Consume: AmqpChannel.basic_consume,
    B.Cancel: AmqpChannel.basic_cancel,
    B.Get: AmqpChannel.basic_get,
    B.Ack: AmqpChannel.basic_ack,
    B.Nack: AmqpChannel.basic_nack,
    B.Reject: AmqpChannel.basic_reject,
    B.Recover: AmqpChannel.basic_recover,
    B.RecoverAsync: AmqpChannel.basic_recover,
    Confirm.Select: AmqpChannel.confirm_select,
    Tx.Select: AmqpChannel.tx_select,
    Tx.Commit: AmqpChannel.tx_commit,
    Tx.Rollback: AmqpChannel.tx_rollback,
}
