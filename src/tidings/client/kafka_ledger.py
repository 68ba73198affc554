"""Per-message acknowledgement over Kafka's one committed offset per partition.

Kafka remembers, for a consumer group and a partition, one offset: where the group goes on.
A work queue acknowledges messages one by one and out of order, so the :class:`Ledger` of a
partition keeps the offsets handed out and not yet settled; the group's committed offset is
the lowest of them (or, when none is open, the next one to hand out). Settled offsets above
an open one are remembered until the open one is settled: if this process dies first, Kafka
hands the partition to another member from the committed offset, and those are delivered
again (at least once, never lost).
"""

from __future__ import annotations

from collections import deque


class Ledger:
    """The offsets of one partition handed out by this process and not yet settled."""

    __slots__ = ("_open", "_settled", "committed", "next")

    def __init__(self, start: int) -> None:
        #: The offset last committed (or that the group had when this process took over).
        self.committed = start
        #: The offset of the next record to hand out.
        self.next = start
        self._open: deque[int] = deque()  # handed out, in offset order
        self._settled: set[int] = set()  # settled while a lower one is open

    def handed(self, offset: int) -> None:
        self._open.append(offset)
        self.next = offset + 1

    def settle(self, offset: int) -> None:
        if self._open and self._open[0] == offset:
            self._open.popleft()
            while self._open and self._open[0] in self._settled:
                self._settled.discard(self._open.popleft())
        elif offset >= self.committed:
            self._settled.add(offset)

    @property
    def point(self) -> int:
        """The offset to commit: every record below it is settled."""
        return self._open[0] if self._open else self.next

    @property
    def open(self) -> int:
        """Records handed out and not settled."""
        return len(self._open) - len(self._settled)

    def advanced(self) -> bool:
        """Whether the point moved past the committed offset (a commit is due)."""
        return self.point > self.committed
