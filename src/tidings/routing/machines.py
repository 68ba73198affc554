"""State machine instances as the broker keeps them, and the one operation that moves one.

The broker does not interpret an instance: it keeps each as opaque bytes (the client's JSON)
under ``(vhost, machine, key)``, in a definitions row of the store and in memory for reads.
:meth:`MachineRows.commit` applies a transition as one step: the instance's new row, the
messages the transition sends, the timers it arms (delayed messages), and the
acknowledgement of the event that caused it. Every change is made in one synchronous call,
so the store's group commit writes them in one transaction: after a crash either all of them
happened or none did (the event is then redelivered and the client applies it again).
Everything that could refuse the step is checked before anything changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from tidings.errors import (
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    VersionConflictError,
)
from tidings.message import Message
from tidings.routing.session import Session
from tidings.routing.vhost import VirtualHosts
from tidings.statistics import TransitionNumbers
from tidings.storage.base import Store
from tidings.transitions import TransitionCommit, read_row

__all__ = ["DESCRIPTION_ROWS", "INSTANCE_ROWS", "MachineRows", "TransitionCommit"]

#: The store's kind for instance rows, and for the machines' descriptions.
INSTANCE_ROWS = "machine-instance"
DESCRIPTION_ROWS = "machine-description"
#: Largest description kept, bytes.
MAX_DESCRIPTION_BYTES = 1 << 20
SEP = "\x1f"
#: Largest instance row kept, bytes (its data, seen ids and timers).
MAX_ROW_BYTES = 1 << 20
#: Instances kept per machine (a bound on the memory the index takes).
MAX_INSTANCES = 1_000_000
#: Transitions counted per machine (names come from clients: a bound on their memory).
MAX_COUNTED = 1_000


class MachineRows:
    """The instances of every machine, by (vhost, machine), then key."""

    def __init__(self, store: Store, vhosts: VirtualHosts) -> None:
        self._store, self._vhosts = store, vhosts
        self.rows: dict[tuple[str, str], dict[str, bytes]] = {}
        #: Each instance's version, as its last commit said (for the optimistic check).
        self.versions: dict[tuple[str, str, str], int] = {}
        #: Each machine's description (JSON its runner registered: states, transitions).
        self.descriptions: dict[tuple[str, str], bytes] = {}
        #: Per machine: per transition its numbers since start, and its dead letters.
        self.numbers: dict[tuple[str, str], dict[str, TransitionNumbers]] = {}
        self.dead_lettered: dict[tuple[str, str], int] = {}

    def recover(self) -> None:
        for key, data in self._store.definitions(DESCRIPTION_ROWS):
            vhost, machine = key.split(SEP, 1)
            self.descriptions[(vhost, machine)] = bytes(data)
        for key, data in self._store.definitions(INSTANCE_ROWS):
            vhost, machine, name = key.split(SEP, 2)
            self.rows.setdefault((vhost, machine), {})[name] = bytes(data)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.versions[(vhost, machine, name)] = int(read_row(bytes(data))["version"])

    def forget_vhost(self, vhost: str) -> None:
        """A deleted vhost's machines go: their instances, descriptions and numbers."""
        for v, machine in [k for k in self.rows if k[0] == vhost]:
            for key in self.rows.pop((v, machine)):
                self._store.delete_definition(INSTANCE_ROWS, SEP.join((v, machine, key)))
                self.versions.pop((v, machine, key), None)
        for v, machine in [k for k in self.descriptions if k[0] == vhost]:
            del self.descriptions[(v, machine)]
            self._store.delete_definition(DESCRIPTION_ROWS, f"{v}{SEP}{machine}")
        for table in (self.numbers, self.dead_lettered):
            for k in [k for k in table if k[0] == vhost]:
                del table[k]

    def find(self, vhost: str, machine: str, key: str) -> bytes | None:
        return self.rows.get((vhost, machine), {}).get(key)

    def list(self, vhost: str, machine: str) -> list[tuple[str, bytes]]:
        return list(self.rows.get((vhost, machine), {}).items())

    def machines(self, vhost: str) -> list[str]:
        return sorted({m for v, m in (*self.rows, *self.descriptions) if v == vhost})

    def description(self, vhost: str, machine: str) -> bytes | None:
        return self.descriptions.get((vhost, machine))

    def describe(self, vhost: str, machine: str, description: bytes) -> None:
        """Keep a machine's description (its runner registers it at start)."""
        if len(description) > MAX_DESCRIPTION_BYTES:
            raise InvalidArgumentError(f"machine '{machine}': description over "
                                       f"{MAX_DESCRIPTION_BYTES} bytes")
        self._vhosts.get(vhost)
        if self.descriptions.get((vhost, machine)) != description:
            self.descriptions[(vhost, machine)] = description
            self._store.put_definition(DESCRIPTION_ROWS, f"{vhost}{SEP}{machine}", description)

    def commit(self, session: Session, delivery_tag: int | None, c: TransitionCommit,
               publish: Callable[[str, str, Message, int | None], object],
               ) -> TransitionNumbers | None:
        """Apply ``c`` and settle the event's delivery (None: the event came another way);
        the numbers of the transition applied, if one was."""
        self._check(session, delivery_tag, c)
        counted = self._count(c)
        if c.row is not None:
            self.rows.setdefault((c.vhost, c.machine), {})[c.key] = c.row
            if c.version is not None:
                self.versions[(c.vhost, c.machine, c.key)] = c.version
            self._store.put_definition(INSTANCE_ROWS, SEP.join((c.vhost, c.machine, c.key)),
                                       c.row)
        for exchange, message in c.messages:
            publish(c.vhost, exchange, message, None)
        for queue, message, delay_ms in c.timers:
            publish(c.vhost, "", _to(message, queue), delay_ms)
        if delivery_tag is not None:
            session.ack(delivery_tag)
        return counted

    def _count(self, c: TransitionCommit) -> TransitionNumbers | None:
        where = (c.vhost, c.machine)
        if c.outcome == "dead_lettered":
            self.dead_lettered[where] = self.dead_lettered.get(where, 0) + 1
            return None
        if not c.transition:
            return None
        numbers = self.numbers.setdefault(where, {})
        found = numbers.get(c.transition)
        if found is None:
            if len(numbers) >= MAX_COUNTED:
                return None
            found = numbers[c.transition] = TransitionNumbers()
        if c.outcome == "failed":
            found.failures += 1
            return None
        found.committed(time.time(), c.handler_ms)
        return found

    def statistics(self, vhost: str, machine: str) -> dict[str, Any]:
        """Per transition: committed, failed, rate, handler and commit time; dead letters."""
        now = time.time()
        numbers = self.numbers.get((vhost, machine), {})
        return {"transitions": {name: n.as_dict(now) for name, n in sorted(numbers.items())},
                "dead_lettered": self.dead_lettered.get((vhost, machine), 0)}

    def transition_numbers(self, vhost: str) -> list[tuple[str, str, TransitionNumbers]]:
        """(machine, transition, numbers) of every machine of ``vhost`` (for Prometheus)."""
        return [(m, name, n) for (v, m), numbers in sorted(self.numbers.items()) if v == vhost
                for name, n in sorted(numbers.items())]

    def _check(self, session: Session, delivery_tag: int | None, c: TransitionCommit) -> None:
        if delivery_tag is not None and not session.holds(delivery_tag):
            raise PreconditionFailedError(f"unknown delivery tag {delivery_tag}")
        if c.expected_version is not None:
            current = self.versions.get((c.vhost, c.machine, c.key), 0)
            if current != c.expected_version:
                raise VersionConflictError(
                    f"instance '{c.key}' of machine '{c.machine}' is at version {current}, "
                    f"not {c.expected_version}: it moved on; apply the event again")
        if c.row is not None and len(c.row) > MAX_ROW_BYTES:
            raise InvalidArgumentError(f"instance '{c.key}' of machine '{c.machine}' is "
                                       f"{len(c.row)} bytes; at most {MAX_ROW_BYTES}")
        known = self.rows.get((c.vhost, c.machine), {})
        if c.key not in known and len(known) >= MAX_INSTANCES:
            raise PreconditionFailedError(f"machine '{c.machine}' has {MAX_INSTANCES} "
                                          f"instances, the most kept")
        v = self._vhosts.get(c.vhost)
        for exchange, _ in c.messages:
            if exchange not in v.exchanges:
                raise NotFoundError(f"no exchange '{exchange}' in vhost '{c.vhost}'")
        for queue, _, _ in c.timers:
            if queue not in v.queues:
                raise NotFoundError(f"no queue '{queue}' in vhost '{c.vhost}'")


def _to(message: Message, queue: str) -> Message:
    message.routing_key = queue
    return message
