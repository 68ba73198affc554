"""MemoryStore: the reference implementation of :class:`~tidings.storage.base.Store`.

Everything lives in dicts; writes apply at once and :meth:`sync` is always done. It is the fake
that makes restart tests exact (a broker reopened on the same MemoryStore object recovers exactly
as one reopened on the same SQLite file) and, with ``keeps_messages=False``, the fast
non-durable mode (``memory://``), where the broker writes no messages at all.
"""

from __future__ import annotations

import asyncio

from tidings.errors import ClosedResourceError
from tidings.storage.base import TRANSIENT


class MemoryStore:
    durable = False

    def __init__(self, *, keeps_messages: bool = True) -> None:
        #: ``memory://`` passes False: nothing survives the process, so nothing is copied here.
        self.keeps_messages = keeps_messages
        self._queues: dict[str, dict[int, tuple[bytes, int]]] = {}
        self._definitions: dict[str, dict[str, bytes]] = {}
        self._marks: dict[str, int] = {}
        self._max_seq = 0
        self._closed = False

    def reopen(self) -> MemoryStore:
        """What a fresh process would find: transient records are gone."""
        for records in self._queues.values():
            for seq in [s for s, (_, flags) in records.items() if flags & TRANSIENT]:
                del records[seq]
        self._closed = False
        return self

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("the store is closed")

    def append(self, queue: str, seq: int, data: bytes, flags: int = 0) -> None:
        self._check()
        self._queues.setdefault(queue, {})[seq] = (data, flags)
        self._max_seq = max(self._max_seq, seq)

    def replace(self, queue: str, seq: int, data: bytes) -> None:
        records = self._queues.get(queue, {})
        if seq in records:
            records[seq] = (data, records[seq][1])

    def remove(self, queue: str, seq: int) -> None:
        self._queues.get(queue, {}).pop(seq, None)

    def remove_after(self, queue: str, seq: int) -> None:
        records = self._queues.get(queue, {})
        for s in [s for s in records if s > seq]:
            del records[s]

    def mark_delivered(self, queue: str, seq: int) -> None:
        self._marks[queue] = max(seq, self._marks.get(queue, 0))

    def put_definition(self, kind: str, key: str, data: bytes) -> None:
        self._check()
        self._definitions.setdefault(kind, {})[key] = data

    def delete_definition(self, kind: str, key: str) -> None:
        self._definitions.get(kind, {}).pop(key, None)

    def backlog(self) -> int:
        return 0

    def write_error(self) -> str | None:
        return None

    def sync(self, hurry: bool = True) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def load(self, queue: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for seq in sorted(s for s in self._queues.get(queue, {}) if s > after_seq):
            out.append((seq, self._queues[queue][seq][0]))
            if len(out) >= limit:
                break
        return out

    def count(self, queue: str) -> int:
        return len(self._queues.get(queue, {}))

    def record_sizes(self, queue: str, limit: int) -> list[int]:
        return [len(data) for _, data in self.load(queue, -1, limit)]

    def queues(self) -> list[str]:
        return [name for name, records in self._queues.items() if records]

    def definitions(self, kind: str) -> list[tuple[str, bytes]]:
        return list(self._definitions.get(kind, {}).items())

    def delivered_marks(self) -> dict[str, int]:
        return dict(self._marks)

    def max_seq(self) -> int:
        return self._max_seq

    def close(self) -> None:
        self._closed = True
