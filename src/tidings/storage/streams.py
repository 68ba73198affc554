"""StreamFiles: the streams of one data directory, each a :class:`SegmentLog`, with group
commit.

Appends are written on the event loop's thread straight into the OS (``os.write``: no lock,
no wait). Making them durable is the slow part, so it goes to one writer thread, as for the
queues' SQLite store: :meth:`StreamFiles.sync` returns a future, and once per loop turn the
streams written since the last handoff are handed over. The thread fdatasyncs each of them
once, then resolves every future of that handoff. Everything appended before a ``sync()``
call is durable when its future resolves: that is when a publisher confirm may go out.

The writer syncs duplicates of the segment files' descriptors (``os.dup``), so a segment
that rolls over on the loop's thread meanwhile cannot pull a file out from under it.

Each stream lives in ``<directory>/<name as hex>/``: any UTF-8 name is a safe directory name
that way, and :meth:`names` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from pathlib import Path

from tidings.errors import ClosedResourceError, InvalidArgumentError
from tidings.files import make_private_directory
from tidings.storage.handoff import Handoff, resolve
from tidings.storage.segments import DEFAULT_SEGMENT_BYTES, LogRecord, SegmentLog

__all__ = ["LogRecord", "StreamFiles"]


def _directory_name(name: str) -> str:
    return name.encode().hex()


class StreamFiles:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        make_private_directory(self.directory)
        self._logs: dict[str, SegmentLog] = {}
        self._dirty: set[str] = set()
        self._next_future: asyncio.Future[None] | None = None
        self._handoff_scheduled = False
        self._handoff_queue: Handoff[tuple[list[int], asyncio.Future[None] | None]] = Handoff()
        self._closed = False
        #: fdatasync rounds so far (group commit keeps this far below the appends).
        self.syncs = 0
        self._thread = threading.Thread(target=self._run, name="tidings-streams", daemon=True)
        self._thread.start()

    # -- streams -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        found = []
        for path in self.directory.iterdir():
            with contextlib.suppress(ValueError):
                if path.is_dir():
                    found.append(bytes.fromhex(path.name).decode())
        return sorted(found)

    def open(self, name: str, max_segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> SegmentLog:
        """The stream ``name``'s log, created when it does not exist."""
        if self._closed:
            raise ClosedResourceError(f"the streams in '{self.directory}' are closed")
        log = self._logs.get(name)
        if log is None:
            if not name:
                raise InvalidArgumentError("a stream needs a name")
            log = SegmentLog(self.directory / _directory_name(name),
                             max_segment_bytes=max_segment_bytes)
            self._logs[name] = log
        return log

    def delete(self, name: str) -> None:
        log = self._logs.pop(name, None)
        self._dirty.discard(name)
        if log is not None:
            log.close()
        shutil.rmtree(self.directory / _directory_name(name), ignore_errors=True)

    # -- appends and durability ----------------------------------------------------------------

    def append(self, name: str, payloads: list[bytes], timestamp_ms: int) -> int:
        """Append to stream ``name`` (opened with its defaults if it is not open); returns
        the first record's offset. Durable once a later :meth:`sync` resolves."""
        first = self.open(name).append(payloads, timestamp_ms)
        self._dirty.add(name)
        return first

    def sync(self) -> asyncio.Future[None]:
        """A future resolved once everything appended so far is durable."""
        loop = asyncio.get_running_loop()
        if self._next_future is None:
            self._next_future = loop.create_future()
        future = self._next_future
        if not self._handoff_scheduled:
            self._handoff_scheduled = True
            loop.call_soon(self._handoff)
        return future

    def _handoff(self) -> None:
        self._handoff_scheduled = False
        fds = [os.dup(self._logs[name].fd) for name in self._dirty if name in self._logs]
        self._dirty.clear()
        future, self._next_future = self._next_future, None
        self._handoff_queue.put((fds, future))

    def _run(self) -> None:
        while (batch := self._handoff_queue.take()) is not None:
            error: BaseException | None = None
            for fd in {fd for fds, _ in batch for fd in fds}:
                try:
                    os.fdatasync(fd)
                except OSError as e:
                    error = e
            for fds, _ in batch:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.syncs += 1
            resolve([future for _, future in batch if future is not None], error)

    def close(self) -> None:
        """Sync every stream and stop the writer."""
        if self._closed:
            return
        if self._dirty or self._next_future is not None:
            self._handoff()
        self._closed = True
        self._handoff_queue.close()
        self._thread.join()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
