"""Time as the broker sees it: a wall clock and timers.

The routing layer never calls ``time`` or ``asyncio`` directly; it asks a :class:`Clock`. The real
one uses the running event loop's timers; :class:`tidings.testing.FakeClock` makes TTLs, delays
and timeouts exact in tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (what TTLs, delays and timestamps use)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once when :meth:`time` reaches ``when``."""
        ...


class LoopClock:
    """The real clock: wall time, timers on the running asyncio loop."""

    def time(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        delay = max(0.0, when - time.time())
        return asyncio.get_running_loop().call_later(delay, callback)
