"""Declaring and deleting exchanges, bindings, queues and policies, with RabbitMQ's rules: reserved
``amq.`` names, equivalence checks on redeclare, exclusive ownership, if-unused / if-empty,
and durable definitions written to the store (:mod:`tidings.routing.topology_rows` is their
stored form). The broker's collaborator for everything that changes the topology.
"""

from __future__ import annotations

import secrets
from typing import Any

from tidings.clock import Clock
from tidings.errors import (
    AccessRefusedError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    ResourceLockedError,
)
from tidings.routing import topology_rows as defs
from tidings.routing.arguments import parse_queue_arguments
from tidings.routing.delayed import DelayedMessages
from tidings.routing.exchange import PREDECLARED, Binding, Exchange, freeze_arguments
from tidings.routing.policies import Policy
from tidings.routing.queue import Queue
from tidings.routing.stream import StreamQueue
from tidings.routing.vhost import Sequence, VirtualHosts
from tidings.statistics import Tally
from tidings.storage.base import Store


class Declarations:
    def __init__(self, vhosts: VirtualHosts, store: Store, clock: Clock,
                 delayed: DelayedMessages, seq: Sequence, tally: Tally | None = None) -> None:
        self.vhosts, self.store, self.clock = vhosts, store, clock
        self.delayed, self.seq = delayed, seq
        self.tally = tally or Tally()

    # -- exchanges -------------------------------------------------------------------------

    def declare_exchange(
        self,
        vhost: str,
        name: str,
        kind: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
        passive: bool = False,
    ) -> Exchange:
        v = self.vhosts.get(vhost)
        _check_name("exchange", name)
        existing = v.exchanges.get(name)
        if passive:
            if name == "":
                raise AccessRefusedError("operation not permitted on the default exchange")
            if existing is None:
                raise NotFoundError(f"no exchange '{name}' in vhost '{vhost}'")
            return existing
        if name == "" or (name.startswith("amq.") and existing is None):
            raise AccessRefusedError(
                f"exchange name '{name}' contains reserved prefix 'amq.'"
                if name else "operation not permitted on the default exchange"
            )
        arguments = dict(arguments or {})
        if existing is not None:
            _check_equivalent("exchange", name, vhost, [
                ("type", existing.kind, kind),
                ("durable", existing.durable, durable),
                ("auto_delete", existing.auto_delete, auto_delete),
                ("internal", existing.internal, internal),
                ("arguments", freeze_arguments(existing.arguments), freeze_arguments(arguments)),
            ])
            return existing
        ex = Exchange(name, kind, vhost, durable, auto_delete, internal, arguments)
        v.add_exchange(ex)
        if durable:
            self.store.put_definition("exchange", *defs.exchange_record(ex))
        return ex

    # -- policies ----------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Add or replace a policy; matching queues and exchanges run with it from now on."""
        v = self.vhosts.get(policy.vhost)
        v.policies.put(policy)
        self.store.put_definition(defs.policy_kind(policy.operator), *defs.policy_record(policy))
        v.apply_policies()

    def delete_policy(self, vhost: str, name: str, *, operator: bool = False) -> None:
        v = self.vhosts.get(vhost)
        kind = "operator policy" if operator else "policy"
        if v.policies.remove(name, operator) is None:
            raise NotFoundError(f"no {kind} '{name}' in vhost '{vhost}'")
        self.store.delete_definition(defs.policy_kind(operator), f"{vhost}{defs.SEP}{name}")
        v.apply_policies()

    def delete_vhost(self, vhost: str) -> None:
        """Delete everything of ``vhost`` (its queues with their messages, its exchanges and
        bindings, its policies), then the vhost itself, as RabbitMQ does; the default vhost
        keeps its predeclared exchanges. A vhost that does not exist is no error."""
        v = self.vhosts.find(vhost)
        if v is None:
            return
        for queue in list(v.queues.values()):
            self.remove_queue(queue)
        for name in [n for n in v.exchanges if n and n not in PREDECLARED]:
            if name in v.exchanges:  # (an auto-delete one may have gone with a binding)
                self.delete_exchange(vhost, name)
        for operator in (False, True):
            for policy in v.policies.list(operator):
                self.delete_policy(vhost, policy.name, operator=operator)
        self.vhosts.remove(vhost)

    def delete_exchange(self, vhost: str, name: str, *, if_unused: bool = False) -> None:
        v = self.vhosts.get(vhost)
        if name == "" or name in PREDECLARED:
            raise AccessRefusedError(f"cannot delete predeclared exchange '{name}'")
        ex = self.vhosts.get_exchange(vhost, name)
        incoming = [b for e in v.exchanges.values() for b in e.bindings
                    if b.to_exchange and b.destination == name]
        if if_unused and (ex.bindings or incoming):
            raise PreconditionFailedError(f"exchange '{name}' in vhost '{vhost}' in use")
        for b in list(ex.bindings) + incoming:
            self._unbind(vhost, b)
        del v.exchanges[name]
        if ex.durable:
            self.store.delete_definition("exchange", f"{vhost}{defs.SEP}{name}")

    # -- bindings --------------------------------------------------------------------------

    def bind(self, vhost: str, source: str, destination: str, routing_key: str = "",
             arguments: dict[str, Any] | None = None, *, to_exchange: bool = False) -> None:
        """Bind a queue (or, with ``to_exchange``, an exchange) to the exchange ``source``."""
        if source == "":
            raise AccessRefusedError(
                f"operation not permitted on the default exchange (bind to queue '{destination}')"
            )
        src = self.vhosts.get_exchange(vhost, source)
        if to_exchange:
            if destination == "":
                raise AccessRefusedError("operation not permitted on the default exchange")
            dest_durable = self.vhosts.get_exchange(vhost, destination).durable
        else:
            dest_durable = self.vhosts.get_queue(vhost, destination).durable
        b = Binding(source, destination, routing_key, freeze_arguments(arguments), to_exchange)
        if src.add_binding(b) and src.durable and dest_durable:
            self.store.put_definition("binding", *defs.binding_record(vhost, b))

    def unbind(self, vhost: str, source: str, destination: str, routing_key: str = "",
               arguments: dict[str, Any] | None = None, *, to_exchange: bool = False) -> None:
        """Remove a binding; one that does not exist (nor its source or destination) is no
        error, as in RabbitMQ."""
        if source == "":
            raise AccessRefusedError("operation not permitted on the default exchange")
        v = self.vhosts.get(vhost)
        if source not in v.exchanges or \
                destination not in (v.exchanges if to_exchange else v.queues):
            return
        b = Binding(source, destination, routing_key, freeze_arguments(arguments), to_exchange)
        self._unbind(vhost, b)

    def _unbind(self, vhost: str, b: Binding) -> None:
        src = self.vhosts.get(vhost).exchanges.get(b.source)
        if src is not None and src.remove_binding(b):
            self.store.delete_definition("binding", defs.binding_record(vhost, b)[0])
            if src.auto_delete and not src.bindings:
                self.delete_exchange(vhost, src.name)

    # -- queues ----------------------------------------------------------------------------

    def declare_queue(
        self,
        vhost: str,
        name: str = "",
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        passive: bool = False,
        connection_id: str | None = None,
        reserved_ok: bool = False,
    ) -> Queue:
        v = self.vhosts.get(vhost)
        if passive:
            queue = self.vhosts.get_queue(vhost, name)
            self.check_exclusive(queue, connection_id)
            return queue
        _check_name("queue", name)
        if not name:
            name = self.new_queue_name()
        elif name.startswith("amq.") and name not in v.queues and not reserved_ok:
            raise AccessRefusedError(
                f"queue name '{name}' contains reserved prefix 'amq.'"
            )
        arguments = dict(arguments or {})
        existing = v.queues.get(name)
        self.tally.queues_declared += 1
        if existing is not None:
            self.check_exclusive(existing, connection_id, exclusive)
            _check_equivalent("queue", name, vhost, [
                ("durable", existing.durable, durable),
                ("auto_delete", existing.auto_delete, auto_delete),
                *[(k, existing.arguments.get(k), arguments.get(k))
                  for k in sorted(set(existing.arguments) | set(arguments))
                  if k.startswith("x-")],
            ])
            existing.touch(self.clock.time())
            return existing
        options = parse_queue_arguments(name, arguments)
        if options.queue_type != "classic":  # quorum and stream queues, as RabbitMQ
            for refused, prop in ((not durable, "non-durable"), (exclusive, "exclusive-owner"),
                                  (auto_delete, "auto-delete")):
                if refused:
                    raise PreconditionFailedError(
                        f"invalid property '{prop}' for queue '{name}' in vhost '{vhost}'")
        queue = v.create_queue(name, durable=durable, auto_delete=auto_delete,
                               arguments=arguments,
                               exclusive_owner=connection_id if exclusive else None)
        self.tally.queues_created += 1
        if durable and not exclusive:
            self.store.put_definition("queue", *defs.queue_record(vhost, name, auto_delete,
                                                                  arguments))
        return queue

    @staticmethod
    def new_queue_name() -> str:
        """A server-generated queue name: ``amq.gen-`` and 128 random bits, as RabbitMQ's, so
        nobody can guess another client's queue."""
        return f"amq.gen-{secrets.token_urlsafe(16)}"

    @staticmethod
    def check_exclusive(queue: Queue, connection_id: str | None,
                        exclusive: bool | None = None) -> None:
        """Another connection's exclusive queue, or (on redeclare) a different ``exclusive``
        flag, is 405 RESOURCE_LOCKED with RabbitMQ's text."""
        owned = queue.exclusive_owner is not None
        if (owned and queue.exclusive_owner != connection_id) or \
                (exclusive is not None and exclusive != owned):
            raise ResourceLockedError(
                f"cannot obtain exclusive access to locked queue '{queue.name}' "
                f"in vhost '{queue.vhost}'. It could be originally declared on another "
                f"connection or the exclusive property value does not match that of the "
                f"original declaration."
            )

    def delete_queue(self, vhost: str, name: str, *, if_unused: bool = False,
                     if_empty: bool = False, connection_id: str | None = None) -> int:
        queue = self.vhosts.get_queue(vhost, name)
        self.check_exclusive(queue, connection_id)
        if if_unused and queue.consumers:
            raise PreconditionFailedError(f"queue '{name}' in vhost '{vhost}' in use")
        # RabbitMQ deletes a stream whatever if-empty says: a log is never "empty" of history
        if if_empty and not isinstance(queue, StreamQueue) and (
                queue.ready_count or self.delayed.per_queue.get((vhost, name))):
            raise PreconditionFailedError(f"queue '{name}' in vhost '{vhost}' is not empty")
        return self.remove_queue(queue)

    def remove_queue(self, queue: Queue) -> int:
        """Delete ``queue`` (no checks): consumers cancelled, rows, bindings, definition and
        the messages delayed for it go."""
        count = queue.ready_count
        self.tally.queues_deleted += 1
        for key in queue.close():
            self.store.remove_after(key, -1)
        v = self.vhosts.get(queue.vhost)
        for ex in list(v.exchanges.values()):
            for b in [b for b in ex.bindings if not b.to_exchange and b.destination == queue.name]:
                self._unbind(queue.vhost, b)
        v.remove_queue(queue)
        # Messages delayed for it are cancelled: never delivered to a later queue of its name.
        self.delayed.void_queue(queue.vhost, queue.name, self.seq.last)
        if queue.durable:
            self.store.delete_definition("queue", queue.store_key)
        return count

    def purge_queue(self, vhost: str, name: str, connection_id: str | None = None) -> int:
        queue = self.vhosts.get_queue(vhost, name)
        self.check_exclusive(queue, connection_id)
        return queue.purge()

    def close_connection(self, connection_id: str) -> None:
        """Delete the exclusive queues a closed connection owned."""
        for queue in [q for q in self.vhosts.queues() if q.exclusive_owner == connection_id]:
            self.remove_queue(queue)


def _check_name(kind: str, name: str) -> None:
    """Names are AMQP short strings: any UTF-8 of up to 255 bytes, as in RabbitMQ."""
    if len(name.encode(errors="surrogatepass")) > 255:
        raise InvalidArgumentError(f"{kind} name '{name[:40]}…' is longer than 255 bytes")


def _check_equivalent(kind: str, name: str, vhost: str,
                      pairs: list[tuple[str, Any, Any]]) -> None:
    for field_name, current, received in pairs:
        if current != received:
            raise PreconditionFailedError(
                f"inequivalent arg '{field_name}' for {kind} '{name}' in vhost '{vhost}': "
                f"received {received!r} but current is {current!r}"
            )
