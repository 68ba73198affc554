"""The threads that plain (non-async) task functions run in, and what happens past a time limit.

A plain function cannot be cancelled, and a fixed pool (asyncio's default executor) would keep
the thread of every call that overran its ``timeout_s``: after a handful, no task would run,
silently. Here each call takes an idle thread or starts a new one, so an overrun never holds
a slot another call needs. At the time limit the caller gets ``TimeoutError`` at once, and the
thread is interrupted as Dramatiq does (an exception raised in it at its next Python bytecode);
a thread that still does not return (blocked in C: a socket read, a lock) is *stuck* and
counted, so that ``tidings worker`` can recycle the process once its other work is done, as
Celery's hard time limit would. Threads are daemons: a stuck one never holds up an exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import threading
from collections.abc import Callable
from typing import Any

#: Idle threads kept for the next calls; more than this many idle ones end.
MAX_IDLE_THREADS = 16


class TimeLimitExceeded(BaseException):  # (Dramatiq's and Celery's name)
    """Raised inside a task's thread when its call ran past its time limit. A
    ``BaseException``, so that a task's ``except Exception`` does not swallow it."""


class TaskThreads:
    """Runs plain functions off the event loop, one thread per call in flight."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()
        #: Threads whose call passed its time limit and that have not returned since.
        self.stuck = 0

    async def call(self, function: Callable[..., Any], args: Any, kwargs: Any,
                   timeout_s: float | None) -> Any:
        """``function(*args, **kwargs)`` in a thread; ``TimeoutError`` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        guard = threading.Lock()
        running: list[int] = []  # the thread's id while the call runs in it
        overran = False

        def settle(error: BaseException | None, value: Any) -> None:
            if overran:  # nobody waits for it any more (and an unread error would be logged)
                self.stuck -= 1
                return
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

        def job() -> None:
            error, value = None, None
            try:
                with guard:
                    running.append(threading.get_ident())
                try:
                    value = function(*args, **kwargs)
                except BaseException as e:  # handed to the caller's future
                    error = e
                finally:
                    with guard:
                        running.clear()
            except TimeLimitExceeded as e:  # the interrupt arrived as the call returned
                error = e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, error, value)

        self._submit(job)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            overran = True
            self.stuck += 1
            with guard:
                if running:
                    _interrupt(running[0])
            raise

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._serve, name="tidings-task", daemon=True).start()

    def _serve(self) -> None:
        while True:
            with contextlib.suppress(TimeLimitExceeded):  # an interrupt that came too late
                self._jobs.get()()
            with self._lock:
                if self._idle >= MAX_IDLE_THREADS:
                    return
                self._idle += 1


def _interrupt(thread_id: int) -> None:
    """Raise :class:`TimeLimitExceeded` in the thread ``thread_id`` at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(TimeLimitExceeded))
