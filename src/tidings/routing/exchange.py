"""Exchanges and the pure routing function of each type.

``Exchange.route(message)`` returns the bindings whose destination should get the message;
the broker follows exchange-to-exchange bindings and alternate exchanges. No I/O, no awaiting
(RabbitMQ's ``rabbit_exchange_type_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidings.errors import CommandInvalidError, InvalidArgumentError
from tidings.message import Message
from tidings.patterns import topic_matches, validate_pattern

DIRECT, FANOUT, TOPIC, HEADERS = "direct", "fanout", "topic", "headers"
DELAYED = "x-delayed-message"
KINDS = (DIRECT, FANOUT, TOPIC, HEADERS, DELAYED)

#: Exchanges every vhost has, as in RabbitMQ.
PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}
#: Routing results cached per routing key on topic exchanges (cleared on any binding change).
TOPIC_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Binding:
    """``source`` exchange routes to ``destination`` (a queue or, for e2e, an exchange)."""

    source: str
    destination: str
    routing_key: str = ""
    arguments: tuple[tuple[str, Any], ...] = ()
    to_exchange: bool = False

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.arguments)


def freeze_arguments(arguments: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    def freeze(v: Any) -> Any:
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        return v

    return tuple(sorted((k, freeze(v)) for k, v in (arguments or {}).items()))


@dataclass(slots=True)
class Exchange:
    name: str
    kind: str
    vhost: str = "/"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    _direct: dict[str, list[Binding]] = field(default_factory=dict)
    _cache: dict[str, list[Binding]] = field(default_factory=dict)
    #: Where unroutable messages go (its ``alternate-exchange`` argument, else a policy's).
    alternate: str | None = None
    #: The policy that applies to it, if any (``routing/policies.py``).
    policy: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CommandInvalidError(f"unknown exchange type '{self.kind}'")
        if self.kind == DELAYED:
            inner = self.arguments.get("x-delayed-type")
            if inner not in (DIRECT, FANOUT, TOPIC, HEADERS):
                raise InvalidArgumentError(
                    f"exchange '{self.name}' of type x-delayed-message needs argument "
                    f"'x-delayed-type' set to direct, fanout, topic or headers"
                )

    @property
    def routing_kind(self) -> str:
        return str(self.arguments["x-delayed-type"]) if self.kind == DELAYED else self.kind

    def add_binding(self, binding: Binding) -> bool:
        """Add; False when an equal binding already exists (binding is idempotent)."""
        if binding in self.bindings:
            return False
        if self.routing_kind == TOPIC:
            validate_pattern(binding.routing_key)
        self.bindings.append(binding)
        self._reindex()
        return True

    def remove_binding(self, binding: Binding) -> bool:
        if binding not in self.bindings:
            return False
        self.bindings.remove(binding)
        self._reindex()
        return True

    def remove_destination(self, destination: str, to_exchange: bool) -> None:
        kept = [
            b
            for b in self.bindings
            if not (b.destination == destination and b.to_exchange == to_exchange)
        ]
        if len(kept) != len(self.bindings):
            self.bindings = kept
            self._reindex()

    def _reindex(self) -> None:
        self._cache.clear()
        self._direct = {}
        for b in self.bindings:
            self._direct.setdefault(b.routing_key, []).append(b)

    def route(self, message: Message) -> list[Binding]:
        kind = self.routing_kind
        if kind == DIRECT:
            return self._direct.get(message.routing_key, [])
        if kind == FANOUT:
            return self.bindings
        if kind == TOPIC:
            key = message.routing_key
            found = self._cache.get(key)
            if found is None:
                found = [b for b in self.bindings if topic_matches(b.routing_key, key)]
                if len(self._cache) >= TOPIC_CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = found
            return found
        return [b for b in self.bindings if headers_match(b.args, message.headers or {})]


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any]) -> bool:
    """RabbitMQ's headers exchange: ``x-match`` all (default), any, all-with-x, any-with-x."""
    mode = binding_args.get("x-match", "all")
    with_x = str(mode).endswith("-with-x")
    wanted = {
        k: v
        for k, v in binding_args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    }
    if not wanted:
        return str(mode).startswith("all")

    def one(key: str, value: Any) -> bool:
        if key not in headers:
            return False
        return value is None or headers[key] == value

    if str(mode).startswith("any"):
        return any(one(k, v) for k, v in wanted.items())
    return all(one(k, v) for k, v in wanted.items())
