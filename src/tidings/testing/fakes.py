"""FakeClock: time that moves only when a test says so, with exact timers."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class FakeTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Implements :class:`tidings.clock.Clock`; ``advance(s)`` runs due timers in order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, FakeTimer, Callable[[], None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (when, next(self._order), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that falls due on the way, in order."""
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer, callback = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            callback()
        self.now = end
