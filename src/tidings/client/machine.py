"""State machines driven by events: the definition and its pure step (no I/O).

A :class:`Machine` names its states, its initial state, the typed data each instance carries
(a dataclass or a pydantic model), how an event names its instance (the correlation key), and
its transitions ``(state, event topic) -> new state``, each with a handler that may change the
data and emit messages and timers through an :class:`Output` (and nothing else: no I/O in a
handler). :meth:`Machine.step` applies one event to one :class:`Instance` and returns a
:class:`Step`: the new instance, the outputs, and a verdict saying what happened. Running
machines durably (the step's result committed with the event's acknowledgement as one store
transaction) is the runner's job; this module only decides.

The rules, in the order :meth:`Machine.step` applies them:

- an event whose id the instance has seen (a redelivery) is a ``DUPLICATE``: nothing runs;
- a timer that is no longer armed (cancelled, rescheduled, or its state left since it was set)
  is ``STALE`` and dropped;
- an event for an instance that does not exist starts one only if the initial state accepts
  it, else ``UNKNOWN_INSTANCE`` (dead-lettered with that reason by the runner);
- an event the current state does not accept (none of its transitions' guards pass) is
  ``NOT_ACCEPTED``: dead-lettered by default, ignored with ``on_unaccepted="ignore"``;
- a final state accepts nothing.

Timers are named; ``out.schedule(name, after_s)`` arms one under an id derived from (machine,
key, timer, version) and replaces one armed under the same name; it fires as an event of topic
``timer:NAME`` and is dropped if, by then, it was cancelled or the instance left the state it
was armed in.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tidings.errors import ConfigError
from tidings.transitions import transition_name

D = TypeVar("D")
#: How many event ids an instance remembers to recognise redeliveries.
SEEN_IDS = 64
#: Transitions an instance remembers (the newest).
RECENT_KEPT = 20
TIMER_PREFIX = "timer:"


class Verdict(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNKNOWN_INSTANCE = "unknown_instance"
    NOT_ACCEPTED = "not_accepted"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Event:
    """What a machine sees of a message: its topic, id and decoded body."""

    topic: str
    id: str
    body: Any = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Instance(Generic[D]):
    key: str
    state: str
    data: D
    version: int = 0
    #: Transitions applied so far.
    history: int = 0
    #: The last :data:`SEEN_IDS` event ids applied, oldest first.
    seen: list[str] = field(default_factory=list)
    #: Armed timers: name -> (timer id, the state it was armed in).
    timers: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: The definition version that last wrote it.
    written_by: int = 1
    #: Operators' moves of it (who, when, from, to, why), kept across transitions.
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: Its last :data:`RECENT_KEPT` transitions, oldest first: when (``at``, epoch seconds),
    #: ``from``, ``to``, ``on`` (the topic) and ``event`` (its id).
    recent: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Emitted:
    """A message a transition sends: to a queue (``queue``) or as an event (``topic``)."""

    body: Any
    queue: str | None = None
    topic: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimerChange:
    name: str
    #: The id of the timer armed (``after_s`` set) or cancelled (``after_s`` None).
    id: str
    after_s: float | None


class Output:
    """What a handler emits; applied only if the transition commits."""

    def __init__(self, machine: str, key: str, version: int) -> None:
        self._machine, self._key, self._version = machine, key, version
        self.messages: list[Emitted] = []
        self.timers: list[TimerChange] = []

    def send(self, queue: str, body: Any, **headers: Any) -> None:
        self.messages.append(Emitted(body, queue=queue, headers=headers))

    def publish(self, topic: str, body: Any, **headers: Any) -> None:
        self.messages.append(Emitted(body, topic=topic, headers=headers))

    def schedule(self, timer: str, after_s: float) -> None:
        if after_s < 0:
            raise ConfigError(f"timer '{timer}': after_s must not be negative")
        ident = f"{self._machine}:{self._key}:{timer}:{self._version}"
        self.timers.append(TimerChange(timer, ident, after_s))

    def cancel(self, timer: str) -> None:
        self.timers.append(TimerChange(timer, "", None))


Handler = Callable[[Any, Event, Output], None]
Guard = Callable[[Any, Event], bool]


@dataclass(frozen=True, slots=True)
class Transition:
    source: str
    topic: str
    target: str
    handler: Handler | None = None
    guard: Guard | None = None

    @property
    def name(self) -> str:
        return transition_name(self.source, self.target, self.topic)


@dataclass(frozen=True, slots=True)
class Step(Generic[D]):
    verdict: Verdict
    instance: Instance[D] | None
    transition: Transition | None = None
    messages: tuple[Emitted, ...] = ()
    timers: tuple[TimerChange, ...] = ()
    reason: str = ""


class Machine(Generic[D]):
    def __init__(self, name: str, *, key: str | Callable[[Event], str], initial: str,
                 data: type[D], final: Iterable[str] = (), version: int = 1,
                 on_unaccepted: str = "dead-letter") -> None:
        if on_unaccepted not in ("dead-letter", "ignore"):
            raise ConfigError("on_unaccepted must be 'dead-letter' or 'ignore'")
        self.name, self.initial, self.data_type = name, initial, data
        self.final, self.version, self.on_unaccepted = frozenset(final), version, on_unaccepted
        self._key = key
        self.transitions: list[Transition] = []

    # -- the definition ------------------------------------------------------------------------

    def transition(self, source: str | Iterable[str], on: str, to: str, *,
                   guard: Guard | None = None) -> Callable[[Handler], Handler]:
        """Decorate a handler ``(data, event, out)`` for ``source --on--> to``."""
        sources = [source] if isinstance(source, str) else list(source)
        for s in sources:
            if s in self.final:
                raise ConfigError(f"machine '{self.name}': final state '{s}' cannot have "
                                  f"transitions")

        def register(handler: Handler) -> Handler:
            self.transitions += [Transition(s, on, to, handler, guard) for s in sources]
            return handler

        return register

    @property
    def states(self) -> list[str]:
        seen = [self.initial]
        for t in self.transitions:
            seen += [s for s in (t.source, t.target) if s not in seen]
        return seen + [s for s in sorted(self.final) if s not in seen]

    def key_of(self, event: Event) -> str:
        if callable(self._key):
            return str(self._key(event))
        body = event.body if isinstance(event.body, dict) else {}
        value = body.get(self._key, event.headers.get(self._key))
        if value is None:
            raise ConfigError(f"machine '{self.name}': event '{event.topic}' has no "
                              f"'{self._key}' to find its instance by")
        return str(value)

    def new_data(self) -> D:
        return self.data_type()

    # -- one event ------------------------------------------------------------------------------

    def step(self, instance: Instance[D] | None, event: Event, key: str | None = None,
             at: float = 0.0) -> Step[D]:
        """Apply ``event`` to ``instance`` (None: none exists yet for its key); ``at`` is
        when (epoch seconds, kept in the instance's recent transitions)."""
        key = key if key is not None else self.key_of(event)
        if instance is not None and event.id in instance.seen:
            return Step(Verdict.DUPLICATE, instance, reason="seen before")
        if event.topic.startswith(TIMER_PREFIX) and not _armed(instance, event):
            return Step(Verdict.STALE, instance, reason="timer no longer armed")
        current = instance or Instance(key, self.initial, self.new_data(),
                                       written_by=self.version)
        chosen = self._choose(current, event)
        if chosen is None:
            if instance is None:
                return Step(Verdict.UNKNOWN_INSTANCE, None, reason=(
                    f"no instance '{key}' of machine '{self.name}', and its initial state "
                    f"'{self.initial}' does not accept '{event.topic}'"))
            if self.on_unaccepted == "ignore":
                return Step(Verdict.IGNORED, instance)
            return Step(Verdict.NOT_ACCEPTED, instance, reason=(
                f"state '{current.state}' of machine '{self.name}' does not accept "
                f"'{event.topic}'"))
        data = copy.deepcopy(current.data)
        out = Output(self.name, key, current.version + 1)
        if chosen.handler is not None:
            chosen.handler(data, event, out)
        target = chosen.target
        timers = rearmed(current.timers, event.topic, out.timers,
                         lambda change: (change.id, target))
        recent = [*current.recent, {"at": round(at, 3), "from": current.state,
                                    "to": chosen.target, "on": event.topic,
                                    "event": event.id}][-RECENT_KEPT:]
        new = Instance(key, chosen.target, data, current.version + 1, current.history + 1,
                       [*current.seen, event.id][-SEEN_IDS:], timers, self.version,
                       current.audit, recent)
        return Step(Verdict.APPLIED, new, chosen, tuple(out.messages), tuple(out.timers))

    def _choose(self, instance: Instance[D], event: Event) -> Transition | None:
        if instance.state in self.final:
            return None
        for t in self.transitions:
            if t.source == instance.state and t.topic == event.topic and (
                    t.guard is None or t.guard(instance.data, event)):
                return t
        return None

    # -- the picture ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The definition as plain data (what the broker keeps and the dashboard draws)."""
        return {"name": self.name, "version": self.version, "initial": self.initial,
                "final": sorted(self.final), "states": self.states,
                "transitions": [{"source": t.source, "topic": t.topic, "target": t.target,
                                 "guard": t.guard is not None} for t in self.transitions]}

    def mermaid(self) -> str:
        """The machine as a Mermaid state diagram (states, transitions, timers, final states)."""
        lines = ["stateDiagram-v2", f"    [*] --> {_id(self.initial)}"]
        for t in self.transitions:
            label = t.topic.replace(TIMER_PREFIX, "timer ") + (" [guard]" if t.guard else "")
            lines.append(f"    {_id(t.source)} --> {_id(t.target)}: {label}")
        lines += [f"    {_id(s)} --> [*]" for s in sorted(self.final)]
        return "\n".join(lines) + "\n"


T = TypeVar("T")


def rearmed(timers: dict[str, T], topic: str, changes: Iterable[TimerChange],
            armed: Callable[[TimerChange], T]) -> dict[str, T]:
    """``timers`` after an event of ``topic`` whose transition made ``changes``: the timer that
    fired and those cancelled are gone, those scheduled set to ``armed(change)``."""
    out = dict(timers)
    if topic.startswith(TIMER_PREFIX):
        out.pop(topic[len(TIMER_PREFIX):], None)
    for change in changes:
        if change.after_s is None:
            out.pop(change.name, None)
        else:
            out[change.name] = armed(change)
    return out


def _armed(instance: Instance[Any] | None, event: Event) -> bool:
    """A timer event is live if its name is armed with its id in the state it was armed in."""
    if instance is None:
        return False
    armed = instance.timers.get(event.topic[len(TIMER_PREFIX):])
    return armed is not None and armed[0] == event.id and armed[1] == instance.state


def _id(state: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in state) or "_"


def dump_data(data: Any) -> Any:
    """Typed state data as JSON-ready values (a dataclass or a pydantic model)."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    return data


def load_data(kind: type[D], value: Any) -> D:
    if hasattr(kind, "model_validate"):
        return kind.model_validate(value)  # type: ignore[attr-defined, no-any-return]
    if dataclasses.is_dataclass(kind):
        return kind(**value)
    return value  # type: ignore[no-any-return]
