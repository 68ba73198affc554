"""The dashboard's memory: the node's and each queue's numbers sampled every few seconds and
kept for the last minutes, so a page opened (or reloaded) shows where things were going
instead of an empty chart.

Waiting and processing time are per interval (the percentiles of what was delivered or
settled since the last sample, from the difference of the cumulative histograms), not since
the start. Bounded: :data:`KEEP` samples of at most :data:`MAX_QUEUES` queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from tidings.http.event_log import is_internal_queue
from tidings.routing.front_door import FrontDoor
from tidings.statistics import Histogram

#: Seconds between samples, and how many are kept (15 minutes).
INTERVAL_S = 5.0
KEEP = 180
#: Queues with a history (the first ones listed; the rest have their live numbers only).
MAX_QUEUES = 200


def interval(now: Histogram, before: Histogram | None) -> Histogram:
    """What ``now`` counted since ``before`` (a copy taken earlier of the same histogram)."""
    out = Histogram()
    old = before.buckets if before is not None else {}
    for index, count in now.buckets.items():
        if (grown := count - old.get(index, 0)) > 0:
            out.buckets[index] = grown
            out.count += grown
    out.min_ms, out.max_ms = 0.0, float("inf")  # (bucket edges, not clamped to samples)
    return out


def _copy(h: Histogram) -> Histogram:
    out = Histogram()
    out.buckets, out.count = dict(h.buckets), h.count
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class History:
    def __init__(self, broker: FrontDoor) -> None:
        self.broker = broker
        self.node: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.queues: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._before: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a sample missed, never the sampler gone
                self.sample(time.time())
            await asyncio.sleep(INTERVAL_S)

    def sample(self, now: float) -> None:
        stats = self.broker.statistics()
        queues = [q for q in stats.queues if not is_internal_queue(q.name)]
        self.node.append({
            "t": round(now, 3), "ready": stats.ready, "unacked": stats.unacked,
            "published": round(stats.rates["published"], 3),
            "delivered": round(stats.rates["delivered"], 3),
            "acked": round(stats.rates["acked"], 3)})
        seen = set()
        for q in queues[:MAX_QUEUES]:
            key = (q.vhost, q.name)
            seen.add(key)
            waiting, processing = self.broker.queue_histograms(q.vhost, q.name)
            before = self._before.get(key, (None, None))
            wait, work = interval(waiting, before[0]), interval(processing, before[1])
            self._before[key] = (_copy(waiting), _copy(processing))
            self.queues.setdefault(key, deque(maxlen=KEEP)).append({
                "t": round(now, 3), "ready": q.ready, "unacked": q.unacked,
                "consumers": q.consumers,
                **{name: round(q.rates[name], 3) for name in ("published", "delivered",
                                                                "acked")},
                "waiting_p50_ms": _ms(wait.percentile(0.5)),
                "waiting_p99_ms": _ms(wait.percentile(0.99)),
                "processing_p50_ms": _ms(work.percentile(0.5)),
                "processing_p99_ms": _ms(work.percentile(0.99))})
        for key in [k for k in self.queues if k not in seen]:  # deleted (or past the bound)
            self.queues.pop(key, None)
            self._before.pop(key, None)

    def of_queue(self, vhost: str, name: str) -> list[dict[str, Any]]:
        return list(self.queues.get((vhost, name), ()))
