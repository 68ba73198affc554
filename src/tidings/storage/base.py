"""The storage contract: what the broker asks of a store, and nothing more.

A store keeps opaque records keyed by ``(queue, seq)`` (``seq`` is unique across the whole
store and grows), plus opaque definitions keyed by ``(kind, key)``. It knows nothing of
exchanges, consumers or AMQP (Huey's "opaque chunk of data").

Writes are *submitted*, not awaited: they are cheap calls on the event loop's thread that join
the next group commit. Everything submitted within one turn of the event loop lands in the same
transaction, so a sequence of writes made without an ``await`` between them is atomic (a
dead-letter's remove and append, a delayed message's move into its queue). :meth:`Store.sync`
returns a future that resolves once everything submitted so far is durable: that is when a
publisher confirm may be sent.

Reads are synchronous and see only committed state.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Record flag: the record is transient (a spilled non-persistent message); dropped on open.
TRANSIENT = 1


class Store(Protocol):
    #: True when records survive the process (SQLite); False for the memory store.
    durable: bool
    #: False when the broker should not write messages at all (``memory://``: records in RAM
    #: would only duplicate the queue). Definitions are written either way.
    keeps_messages: bool

    def append(self, queue: str, seq: int, data: bytes, flags: int = 0) -> None:
        """Add a record to ``queue``."""
        ...

    def replace(self, queue: str, seq: int, data: bytes) -> None:
        """Rewrite an existing record (e.g. a new delivery count)."""
        ...

    def remove(self, queue: str, seq: int) -> None:
        """Remove one record; removing a missing record is not an error."""
        ...

    def remove_after(self, queue: str, seq: int) -> None:
        """Remove every record of ``queue`` whose seq is greater than ``seq`` (-1: all)."""
        ...

    def mark_delivered(self, queue: str, seq: int) -> None:
        """Remember that records of ``queue`` up to ``seq`` have been delivered at least once."""
        ...

    def put_definition(self, kind: str, key: str, data: bytes) -> None: ...

    def delete_definition(self, kind: str, key: str) -> None: ...

    def sync(self, hurry: bool = True) -> asyncio.Future[None]:
        """A future resolved when every write submitted so far is durable (with ``hurry``
        False, written at the store's own pace: for a caller that only wants to know when)."""
        ...

    def backlog(self) -> int:
        """Writes submitted but not yet durable; producers of writes wait when it is large."""
        ...

    def write_error(self) -> str | None:
        """Why writes are failing right now (a full disk, an I/O error; they are retried),
        or None."""
        ...

    def load(self, queue: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` records of ``queue`` with seq > ``after_seq``, in seq order."""
        ...

    def count(self, queue: str) -> int: ...

    def record_sizes(self, queue: str, limit: int) -> list[int]:
        """Byte sizes of the first ``limit`` records of ``queue`` (without reading them)."""
        ...

    def queues(self) -> list[str]:
        """Names of queues that hold at least one record."""
        ...

    def definitions(self, kind: str) -> list[tuple[str, bytes]]: ...

    def delivered_marks(self) -> dict[str, int]: ...

    def max_seq(self) -> int:
        """The greatest seq ever stored (0 when empty)."""
        ...

    def close(self) -> None:
        """Make everything submitted durable, then release the store."""
        ...
