"""Per-message acknowledgement over Kafka's one committed offset per partition.

Kafka remembers, for a consumer group and a partition, one offset: where the group goes on.
A work queue acknowledges messages one by one and out of order, so the :class:`Ledger` of a
partition keeps the offsets handed out and not yet settled; the group's committed offset is
the lowest of them (or, when none is open, the next one to hand out). Settled offsets above
an open one are remembered until the open one is settled: if this process dies first, Kafka
hands the partition to another member from the committed offset, and those are delivered
again (at least once, never lost).

Kafka does not count deliveries, so each commit carries, as its metadata, how far this process
handed records out and how often the open ones were delivered: the next owner of the partition
counts a record below that mark as delivered once more (or as often as it says), and the
delivery limit then stops a message that kills every process it is handed to.
"""

from __future__ import annotations

import json
from collections import deque

#: Redelivered offsets whose delivery counts a commit carries at most (Kafka keeps 4 KB of
#: commit metadata by default).
MAX_COUNTED = 100


class Ledger:
    """The offsets of one partition handed out by this process and not yet settled, and how
    often each was delivered."""

    __slots__ = ("_open", "_settled", "committed", "counts", "marked", "next")

    def __init__(self, start: int, marked: int = 0) -> None:
        #: The offset last committed (or that the group had when this process took over).
        self.committed = start
        #: The offset of the next record to hand out.
        self.next = start
        #: The handed-out mark the last commit carried (see :meth:`metadata`).
        self.marked = max(start, marked)
        #: Deliveries of open offsets delivered more than once.
        self.counts: dict[int, int] = {}
        self._open: deque[int] = deque()  # handed out, in offset order
        self._settled: set[int] = set()  # settled while a lower one is open

    def handed(self, offset: int, deliveries: int = 1) -> None:
        self._open.append(offset)
        self.next = offset + 1
        if deliveries > 1:
            self.counts[offset] = deliveries

    def settle(self, offset: int) -> None:
        self.counts.pop(offset, None)
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
        """Whether a commit is due: the point moved past the committed offset, or records
        were handed out since the last commit said how far."""
        return self.point > self.committed or self.next > self.marked

    def metadata(self) -> str:
        """What a commit carries besides the offset: how far this process handed records out
        (``n``) and the deliveries of the open ones delivered more than once (``d``), so
        that the member that gets the partition after this one dies counts them."""
        counts = dict(sorted(self.counts.items())[:MAX_COUNTED])
        return json.dumps({"n": self.next, "d": {str(o): c for o, c in counts.items()}},
                          separators=(",", ":"))


def history(metadata: str | None) -> tuple[int, dict[int, int]]:
    """A commit's :meth:`Ledger.metadata` read back (nothing known: ``(0, {})``)."""
    try:
        data = json.loads(metadata or "{}")
        return int(data.get("n", 0)), {int(o): int(c) for o, c in data.get("d", {}).items()}
    except (ValueError, TypeError, AttributeError):
        return 0, {}


def deliveries_before(offset: int, seen: tuple[int, dict[int, int]]) -> int:
    """How often ``offset`` was delivered before, by what the last committer said."""
    handed_to, counts = seen
    return counts.get(offset, 1) if offset < handed_to else 0
