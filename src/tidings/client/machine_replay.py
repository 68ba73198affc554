"""Rebuilding a state machine's instances from the events kept in the events log.

With ``client.keep_events()`` every published event is kept in the stream ``EVENTS_LOG``.
:func:`rebuild` reads it from a start (``"first"``, an offset, a time or an age) up to now,
and applies each event of the machine's topics through the same definition, as the runner
would, with every output suppressed: no message is sent, no timer armed. Timers are not in
the log (they are delayed messages to the machine's queue), so the rebuild fires them itself:
a timer an event armed is due its delay after that event was published, and fires before the
first later event of its instance, or at the end if it is due by then.

The :class:`ReplayReport` says where the rebuilt instances differ from those the broker
holds (state, data; instances only one side has) and which definition version last wrote
each stored one: the check to run before deploying changed handlers. ``apply=True`` writes
each differing rebuilt instance as a new version (an audit record says a replay wrote it)
and arms its pending timers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from tidings.client.machine import (
    TIMER_PREFIX,
    Event,
    Instance,
    Machine,
    Verdict,
    dump_data,
    rearmed,
)
from tidings.client.machine_rows import KEY_HEADER, TOPIC_HEADER, VHOST, encode_instance, event_of
from tidings.client.replay import EVENTS_LOG, MARKER, append_marker, check_events_log
from tidings.client.streams import Start, StreamReader, StreamRecord
from tidings.client.transport import Transport
from tidings.errors import VersionConflictError
from tidings.message import Delivery, Message
from tidings.transitions import TransitionCommit

D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Difference:
    """Where a rebuilt instance differs from the stored one (``what``: "state", "data",
    "missing" (stored, not rebuilt) or "extra" (rebuilt, not stored))."""

    key: str
    what: str
    stored: Any
    rebuilt: Any


@dataclass
class ReplayReport(Generic[D]):
    #: Events of the machine's topics read from the log.
    events: int = 0
    #: Transitions the rebuild applied (timers included), and timers it fired.
    applied: int = 0
    timers: int = 0
    #: Events no state took (they would have been dead letters or ignored).
    unaccepted: int = 0
    rebuilt: dict[str, Instance[D]] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    #: Stored instances per the definition version that last wrote them.
    written_by: dict[int, int] = field(default_factory=dict)
    #: With ``apply=True``: instances written, and those that moved on meanwhile (skipped).
    written: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.differences


class _Rebuild(Generic[D]):
    """The instances as the events so far make them, with their timers' due times."""

    def __init__(self, machine: Machine[D], report: ReplayReport[D]) -> None:
        self.machine, self.report = machine, report
        self.due: dict[str, dict[str, float]] = {}

    def event(self, event: Event, key: str, at: float) -> None:
        self.fire_due(key, at)
        self._step(event, key, at)

    def fire_due(self, key: str, until: float) -> None:
        while True:
            pending = self.due.get(key, {})
            ripe = sorted((due, name) for name, due in pending.items() if due <= until)
            if not ripe:
                return
            due, name = ripe[0]
            del pending[name]
            instance = self.report.rebuilt.get(key)
            armed = instance.timers.get(name) if instance is not None else None
            if armed is None:
                continue
            self.report.timers += 1
            self._step(Event(f"{TIMER_PREFIX}{name}", armed[0], None, {}), key, due)

    def _step(self, event: Event, key: str, at: float) -> None:
        step = self.machine.step(self.report.rebuilt.get(key), event, key, at)
        if step.verdict is Verdict.APPLIED:
            assert step.instance is not None
            self.report.rebuilt[key] = step.instance
            self.report.applied += 1
            self.due[key] = rearmed(self.due.get(key, {}), event.topic, step.timers,
                                    lambda change: at + (change.after_s or 0.0))
        elif step.verdict in (Verdict.UNKNOWN_INSTANCE, Verdict.NOT_ACCEPTED, Verdict.IGNORED):
            self.report.unaccepted += 1


async def rebuild(machine: Machine[D], transport: Transport, start: Start,
                  stored: dict[str, Instance[D]], *, apply: bool = False,
                  queue_of: Callable[[str], str] = str) -> ReplayReport[D]:
    """Rebuild ``machine``'s instances from the events log since ``start`` and compare them
    with ``stored``; with ``apply``, write the differing ones (see the module's text)."""
    await check_events_log(transport)
    topics = {t.topic for t in machine.transitions if not t.topic.startswith(TIMER_PREFIX)}
    report: ReplayReport[D] = ReplayReport()
    work = _Rebuild(machine, report)
    end = await append_marker(transport)
    async with StreamReader(transport, EVENTS_LOG, start, None, 100) as records:
        async for record in records:
            if record.headers.get(MARKER) == end:
                break
            if record.headers.get(MARKER) is not None or record.topic not in topics:
                continue
            report.events += 1
            event = _event(record)
            try:
                key = machine.key_of(event)
            except Exception:
                report.unaccepted += 1
                continue
            work.event(event, key, record.timestamp or time.time())
    now = time.time()
    for key in list(report.rebuilt):
        work.fire_due(key, now)
    _compare(report, stored)
    if apply:
        await _apply(machine, transport, report, stored, work.due, now, queue_of, start)
    return report


def _event(record: StreamRecord) -> Event:
    message: Message = replace(record.delivery.message, routing_key=record.topic)
    return event_of(Delivery(message, EVENTS_LOG, record.offset, False, 0))


def _compare(report: ReplayReport[D], stored: dict[str, Instance[D]]) -> None:
    for instance in stored.values():
        report.written_by[instance.written_by] = report.written_by.get(instance.written_by,
                                                                       0) + 1
    for key in sorted(set(stored) | set(report.rebuilt)):
        old, new = stored.get(key), report.rebuilt.get(key)
        if new is None:
            assert old is not None
            report.differences.append(Difference(key, "missing", old.state, None))
        elif old is None:
            report.differences.append(Difference(key, "extra", None, new.state))
        elif old.state != new.state:
            report.differences.append(Difference(key, "state", old.state, new.state))
        elif dump_data(old.data) != dump_data(new.data):
            report.differences.append(Difference(key, "data", dump_data(old.data),
                                                 dump_data(new.data)))


async def _apply(machine: Machine[D], transport: Transport, report: ReplayReport[D],
                 stored: dict[str, Instance[D]], due: dict[str, dict[str, float]], now: float,
                 queue_of: Callable[[str], str], start: Start) -> None:
    for difference in report.differences:
        rebuilt = report.rebuilt.get(difference.key)
        if rebuilt is None:
            continue  # (an instance the log does not know is left as it is)
        old = stored.get(difference.key)
        version = (old.version if old is not None else 0) + 1
        audit = [*(old.audit if old is not None else []), {
            "at": round(now, 3), "by": "replay",
            "from": old.state if old is not None else None, "to": rebuilt.state,
            "reason": f"rebuilt from the events log since {start!r}"}]
        written = replace(rebuilt, version=version, audit=audit)
        queue = queue_of(difference.key)
        timers = tuple(
            (queue, Message(b"", queue, message_id=ident, persistent=True,
                            headers={TOPIC_HEADER: f"{TIMER_PREFIX}{name}",
                                     KEY_HEADER: difference.key}),
             max(0, int((due.get(difference.key, {}).get(name, now) - now) * 1000)))
            for name, (ident, _) in rebuilt.timers.items())
        try:
            await transport.commit_transition(None, TransitionCommit(
                VHOST, machine.name, difference.key, encode_instance(written, now),
                timers=timers, expected_version=old.version if old is not None else 0,
                version=version))
        except VersionConflictError:
            report.skipped.append(difference.key)
            continue
        report.written += 1
