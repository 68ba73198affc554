"""tidings serve's state machine operations over AMQP (``amq.tidings.control``).

A state machine's runner in a client of tidings serve, or in a process that joins a shared
data directory, commits each transition as the embedded broker's runner does: in one step
with the acknowledgement of the event that caused it (``routing/machines.py``). AMQP has no
method for that, so it is a publish to ``amq.tidings.control``, as the other extensions
(``amqp/extensions.py``), with the format of :mod:`tidings.transitions`:

- ``machine-commit`` (on the channel that holds the event's delivery; header
  ``x-delivery-tag``, absent when there is none): the instance's new row, the messages, the
  timers and the ack, applied at once and confirmed when durable. When the instance is no
  longer at ``x-expected-version`` nothing changes and the publish comes back as a
  ``basic.return`` (``406 PRECONDITION_FAILED``, header ``x-version``: the current one), so
  the client reads it again without losing its channel. Needs read permission on the
  machine's queue ``machine.NAME`` and write permission on every exchange its messages go to
  (the default exchange for timers and dead letters); in a transaction it is refused.
- ``machine-find`` (headers ``x-machine``, ``x-key``) and ``machine-list`` (``x-machine``,
  ``x-after``: the last key of the page before, ``x-limit``) answer with the request coming
  back as a ``basic.return`` (``200 ANSWER``) whose body holds the rows; read permission on
  the machine's queue.
- ``machine-describe`` (``x-machine``, body: the description as JSON) keeps the machine's
  description for the dashboard; configure permission on its queue.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from pamqp.base import Frame as Method

from tidings.amqp import frames as wire
from tidings.errors import InvalidArgumentError, PreconditionFailedError, VersionConflictError
from tidings.message import Message
from tidings.routing.front_door import FrontDoor, Session
from tidings.transitions import (
    AFTER_HEADER,
    COMMIT,
    DESCRIBE,
    FIND,
    FOUND_HEADER,
    KEY_HEADER,
    LIMIT_HEADER,
    LIST,
    MACHINE_HEADER,
    TAG_HEADER,
    VERSION_HEADER,
    machine_queue,
    pack_instances,
    read_row,
    unpack_commit,
)

CONTROL_EXCHANGE = "amq.tidings.control"
OPERATIONS = (COMMIT, FIND, LIST, DESCRIBE)
#: Rows one ``machine-list`` answer holds at most (the client asks page after page).
MAX_PAGE = 1_000


class MachineChannel(Protocol):
    """What these operations use of the channel they arrived on (``AmqpChannel``)."""

    vhost: str
    broker: FrontDoor
    session: Session
    tx: Any

    def check(self, permission: str, kind: str, name: str) -> None: ...

    def admit(self, message: Message) -> None: ...

    def send_content(self, method: Method, message: Message,
                     extra: dict[str, Any] | None = None) -> None: ...


def operate(channel: MachineChannel, operation: str, message: Message) -> None:
    """One machine operation (the caller confirms the publish afterwards)."""
    headers = message.headers or {}
    try:
        if operation == COMMIT:
            _commit(channel, message, headers)
            return
        machine = _text(headers, MACHINE_HEADER)
    except ValueError as e:
        raise InvalidArgumentError(f"{CONTROL_EXCHANGE} {operation}: {e}") from e
    queue = machine_queue(machine)
    if operation == DESCRIBE:
        channel.check("configure", "queue", queue)
        channel.broker.describe_machine(channel.vhost, machine, bytes(message.body))
        return
    channel.check("read", "queue", queue)
    if operation == FIND:
        row = channel.broker.find_instance(channel.vhost, machine, _text(headers, KEY_HEADER))
        _answer(channel, message, row or b"", {FOUND_HEADER: row is not None})
        return
    after = str(headers.get(AFTER_HEADER) or "")
    limit = headers.get(LIMIT_HEADER)
    size = limit if isinstance(limit, int) and 0 < limit <= MAX_PAGE else MAX_PAGE
    # the page's keys only are ordered (a page of a machine with many instances costs
    # O(n log size), not a sort of them all)
    rows = heapq.nsmallest(size, ((k, r) for k, r in channel.broker.list_instances(
        channel.vhost, machine) if k > after))
    _answer(channel, message, pack_instances(rows), {"x-count": len(rows)})


def _commit(channel: MachineChannel, message: Message, headers: dict[str, Any]) -> None:
    if channel.tx is not None:
        raise PreconditionFailedError(f"{COMMIT} cannot be part of a transaction")
    tag = headers.get(TAG_HEADER)
    if tag is not None and (not isinstance(tag, int) or isinstance(tag, bool)):
        raise ValueError("header 'x-delivery-tag' must be a delivery tag")
    try:
        commit = unpack_commit(channel.vhost, headers, bytes(message.body))
    except Exception as e:  # (pamqp's errors on hostile bytes included)
        raise InvalidArgumentError(f"{CONTROL_EXCHANGE} {COMMIT}: {e}") from e
    if commit.row is not None:
        try:
            read_row(commit.row)
        except (ValueError, TypeError) as e:
            raise InvalidArgumentError(f"{CONTROL_EXCHANGE} {COMMIT}: the row is not an "
                                       f"instance row") from e
    channel.check("read", "queue", machine_queue(commit.machine))
    exchanges = {e for e, _ in commit.messages} | ({""} if commit.timers else set())
    for exchange in sorted(exchanges):
        channel.check("write", "exchange", exchange)
    for _, m in commit.messages:
        channel.admit(m)
    for _, m, _ in commit.timers:
        channel.admit(m)
    try:
        channel.broker.commit_transition(channel.session, tag, commit)
    except VersionConflictError as e:
        current = channel.broker.find_instance(channel.vhost, commit.machine, commit.key)
        version = read_row(current)["version"] if current is not None else 0
        channel.send_content(wire.Return(406, f"PRECONDITION_FAILED - {e}"[:255],
                                         CONTROL_EXCHANGE, COMMIT),
                             Message(b"", message_id=message.message_id,
                                     headers={VERSION_HEADER: int(version)}))


def _answer(channel: MachineChannel, request: Message, body: bytes,
            headers: dict[str, Any]) -> None:
    channel.send_content(wire.Return(200, "ANSWER", CONTROL_EXCHANGE, ""),
                         Message(body, message_id=request.message_id, headers=headers))


def _text(headers: dict[str, Any], name: str) -> str:
    value = headers.get(name)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode(errors="replace")
    if not isinstance(value, str) or not value:
        raise ValueError(f"header '{name}' must name it")
    return value
