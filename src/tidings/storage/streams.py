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

Readers see a record only once it is durable (:meth:`committed`): an offset somebody has
read never comes back after a crash holding another record. A ``durable=False`` set of
streams (a ``memory://`` broker's) skips the fdatasync and shows records at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from tidings.errors import ClosedResourceError, InvalidArgumentError
from tidings.files import make_private_directory
from tidings.storage.handoff import Handoff, resolve
from tidings.storage.keys import Keyring
from tidings.storage.segments import DEFAULT_SEGMENT_BYTES, LogRecord, SegmentLog

__all__ = ["LogRecord", "StreamFiles"]


def _directory_name(name: str) -> str:
    return name.encode().hex()


class StreamFiles:
    def __init__(self, directory: str | Path, *, durable: bool = True,
                 temporary: bool = False, keyring: Keyring | None = None) -> None:
        """``keyring``: the master keys that encrypt the streams at rest (None: plain)."""
        self.directory = Path(directory)
        self.keyring = keyring
        self.durable = durable
        #: Removed on close (a ``memory://`` broker's streams live in a temporary directory).
        self.temporary = temporary
        make_private_directory(self.directory)
        self._logs: dict[str, SegmentLog] = {}
        self._committed: dict[str, int] = {}
        self._listeners: dict[str, Callable[[], None]] = {}
        self._dirty: set[str] = set()
        self._next_future: asyncio.Future[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
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
                             max_segment_bytes=max_segment_bytes, keyring=self.keyring)
            self._logs[name] = log
            self._committed[name] = log.next_offset
        return log

    def use_keyring(self, keyring: Keyring) -> None:
        """Seal the segments made from now on under ``keyring`` (a rotation)."""
        self.keyring = keyring
        for log in self._logs.values():
            log.keyring = keyring

    def committed(self, name: str) -> int:
        """The offset after the last durable record of ``name``: what readers may see."""
        return self._committed.get(name, 0)

    def on_commit(self, name: str, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (on the loop) whenever more of ``name`` became durable."""
        if callback is None:
            self._listeners.pop(name, None)
        else:
            self._listeners[name] = callback

    def delete(self, name: str) -> None:
        log = self._logs.pop(name, None)
        self._committed.pop(name, None)
        self._listeners.pop(name, None)
        self._dirty.discard(name)
        if log is not None:
            log.close()
        shutil.rmtree(self.directory / _directory_name(name), ignore_errors=True)

    # -- appends and durability ----------------------------------------------------------------

    def append(self, name: str, payloads: list[bytes], timestamp_ms: int) -> int:
        """Append to stream ``name`` (opened with its defaults if it is not open); returns
        the first record's offset. Durable once a later :meth:`sync` resolves."""
        log = self.open(name)
        return self._appended(name, log, log.append(payloads, timestamp_ms))

    def append_batch(self, name: str, payload: bytes, count: int, timestamp_ms: int) -> int:
        """Append one entry of ``count`` records (see :meth:`SegmentLog.append_batch`)."""
        log = self.open(name)
        return self._appended(name, log, log.append_batch(payload, count, timestamp_ms))

    def _appended(self, name: str, log: SegmentLog, first: int) -> int:
        if not self.durable:
            self._committed[name] = log.next_offset
            return first
        self._dirty.add(name)
        if not self._handoff_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): durable before returning
                log.sync()
                self._dirty.discard(name)
                self._committed[name] = log.next_offset
                return first
            self._handoff_scheduled = True
            loop.call_soon(self._handoff)
        return first

    def pending(self) -> bool:
        """Whether appends are not yet durable."""
        return bool(self._dirty) or (self._in_flight is not None and not self._in_flight.done())

    def sync(self) -> asyncio.Future[None]:
        """A future resolved once everything appended so far is durable."""
        loop = asyncio.get_running_loop()
        if not self._dirty:
            if self._in_flight is not None and not self._in_flight.done():
                return self._in_flight
            done = loop.create_future()
            done.set_result(None)
            return done
        if self._next_future is None:
            self._next_future = loop.create_future()
        if not self._handoff_scheduled:
            self._handoff_scheduled = True
            loop.call_soon(self._handoff)
        return self._next_future

    def _handoff(self) -> None:
        self._handoff_scheduled = False
        if not self._dirty:
            return
        fds, marks = [], {}
        for name in self._dirty:
            log = self._logs.get(name)
            if log is not None:
                fds.append(os.dup(log.fd))
                marks[name] = log.next_offset
        self._dirty.clear()
        future = self._next_future or asyncio.get_running_loop().create_future()
        self._next_future = None
        future.add_done_callback(lambda f: self._committed_to(marks, f))
        self._in_flight = future
        self._handoff_queue.put((fds, future))

    def _committed_to(self, marks: dict[str, int], future: asyncio.Future[None]) -> None:
        """A sync round landed: its records become visible and the streams' readers hear."""
        if future.cancelled() or future.exception() is not None:
            return  # not durable: the next round that succeeds shows them
        for name, mark in marks.items():
            if name in self._committed and mark > self._committed[name]:
                self._committed[name] = mark
                listener = self._listeners.get(name)
                if listener is not None:
                    listener()

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
        self._closed = True
        self._handoff_queue.close()
        self._thread.join()
        for name in self._dirty:
            with contextlib.suppress(OSError):
                self._logs[name].sync()
        self._dirty.clear()
        if self._next_future is not None and not self._next_future.done():
            self._next_future.set_result(None)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)
