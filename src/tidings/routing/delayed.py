"""Delayed messages: held durably until due, then moved into their queue or exchange once.

Each delayed message is one store record under :data:`STORE_KEY`, carrying its due time and
target. Moving it is a remove plus an append submitted in the same loop turn, so both land in
one transaction: a delayed message is never lost and never delivered twice, across restarts
too (the peers' complaint #3). Due order is ``(due_at, seq)``.
"""

from __future__ import annotations

import heapq

from tidings.message import Record

STORE_KEY = "\x00delayed"


class DelayedMessages:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Record]] = []
        self._removed: set[int] = set()
        self.per_queue: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def add(self, seq: int, record: Record) -> None:
        heapq.heappush(self._heap, (record.due_at or 0.0, seq, record))
        key = _queue_key(record)
        if key is not None:
            self.per_queue[key] = self.per_queue.get(key, 0) + 1

    def next_due(self) -> float | None:
        self._skip_removed()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[int, Record]]:
        out: list[tuple[int, Record]] = []
        while True:
            self._skip_removed()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, seq, record = heapq.heappop(self._heap)
            self._forget(record)
            out.append((seq, record))

    def entries(self) -> list[tuple[int, Record]]:
        return [(seq, r) for _, seq, r in sorted(self._heap) if seq not in self._removed]

    def remove(self, seq: int) -> Record | None:
        for _, s, record in self._heap:
            if s == seq and s not in self._removed:
                self._removed.add(seq)
                self._forget(record)
                return record
        return None

    def _forget(self, record: Record) -> None:
        key = _queue_key(record)
        if key is not None:
            self.per_queue[key] -= 1

    def _skip_removed(self) -> None:
        while self._heap and self._heap[0][1] in self._removed:
            self._removed.discard(heapq.heappop(self._heap)[1])


def _queue_key(record: Record) -> tuple[str, str] | None:
    if "queue" in record.target:
        return (record.target["vhost"], record.target["queue"])
    return None
