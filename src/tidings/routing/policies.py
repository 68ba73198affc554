"""Policies: queue and exchange settings an operator applies by name pattern, as RabbitMQ's.

A policy (``vhost``, ``name``, ``pattern``, ``apply-to``, ``priority``, ``definition``) matches
the queues and exchanges of its vhost whose name the pattern finds (a regular-expression
search, as RabbitMQ's); of the policies that match one, the highest priority applies (ties go
to the name that sorts first). Operator policies are a second set, limited to the numeric
limits, applied on top of the first.

How a definition meets a queue's own ``x-`` arguments is RabbitMQ's rule: for the numeric
limits (``message-ttl``, ``expires``, ``max-length``, ``max-length-bytes``,
``delivery-limit``, and for streams ``max-age`` and ``stream-max-segment-size-bytes``) the
smaller value wins, whichever set it; for the rest (dead-lettering, ``overflow``) the
queue's argument wins. Keys that mean something only to RabbitMQ's clustering or plugins
(``ha-mode``, ``federation-upstream``, ...) are accepted and reported as having no effect,
never silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tidings.errors import InvalidArgumentError
from tidings.stream_starts import parse_age

APPLY_TO = ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams")
#: Definition keys that set a queue argument, and the argument each sets.
QUEUE_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "max-age": "x-max-age",
    "stream-max-segment-size-bytes": "x-stream-max-segment-size-bytes",
}
#: Definition keys that set an exchange argument.
EXCHANGE_KEYS = {"alternate-exchange": "alternate-exchange"}
#: Keys a stream takes (the rest describe a queue that forgets); and those only a stream takes.
STREAM_KEYS = frozenset({"max-length-bytes", "max-age", "stream-max-segment-size-bytes"})
ONLY_STREAM_KEYS = frozenset({"max-age", "stream-max-segment-size-bytes"})
#: Keys where the smaller of policy and argument applies (RabbitMQ's merge strategy).
SMALLER_WINS = frozenset({"message-ttl", "expires", "max-length", "max-length-bytes",
                          "delivery-limit", "max-age", "stream-max-segment-size-bytes"})
#: Keys an operator policy may set (RabbitMQ's list, less the in-memory limits).
OPERATOR_KEYS = frozenset({"message-ttl", "expires", "max-length", "max-length-bytes",
                           "delivery-limit"})
#: Keys accepted because tidings has nothing to set for them (every queue already behaves so).
WITHOUT_SETTING = {
    "queue-mode": ("default", "lazy"),
}
#: Keys RabbitMQ knows that tidings accepts with a warning: they have no effect here.
NO_EFFECT = frozenset({
    "ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown",
    "ha-promote-on-failure", "queue-master-locator", "queue-leader-locator",
    "initial-cluster-size", "max-in-memory-length", "max-in-memory-bytes",
    "federation-upstream", "federation-upstream-set", "federation-upstream-pattern",
    "shovel", "consumer-timeout", "max-segment-size",
})
_INT_MINIMUM = {"message-ttl": 0, "expires": 1, "max-length": 0, "max-length-bytes": 0,
                "delivery-limit": 0, "stream-max-segment-size-bytes": 64}
_STRINGS = {"dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange"}
_CHOICES = {"overflow": ("drop-head", "reject-publish", "reject-publish-dlx")}
MAX_PRIORITY = 2**31 - 1
_TYPE_OF = {"classic_queues": "classic", "quorum_queues": "quorum", "streams": "stream"}


@dataclass(frozen=True, slots=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int = 0
    apply_to: str = "all"
    #: An operator policy (the second set, limits only).
    operator: bool = False
    #: What the definition holds that has no effect in tidings, said once when it is set.
    warnings: tuple[str, ...] = ()
    _regex: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)

    def applies_to(self, name: str, kind: str) -> bool:
        """``kind``: ``exchange``, or a queue's type (``classic``, ``quorum``, ``stream``)."""
        if kind == "exchange":
            fits = self.apply_to in ("all", "exchanges")
        else:
            fits = self.apply_to in ("all", "queues") or _TYPE_OF.get(self.apply_to) == kind
        if not fits:
            return False
        return self._regex.search(name) is not None


def make_policy(vhost: str, name: str, pattern: Any, definition: Any, priority: Any = 0,
                apply_to: Any = "all", *, operator: bool = False) -> Policy:
    """A checked policy; :class:`InvalidArgumentError` names the first thing wrong."""
    kind = "operator policy" if operator else "policy"
    if not isinstance(name, str) or not name or len(name.encode()) > 255:
        raise InvalidArgumentError(f"{kind} name must be 1 to 255 bytes of text")
    if not isinstance(pattern, str):
        raise InvalidArgumentError(f"{kind} '{name}': pattern must be a string")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise InvalidArgumentError(
            f"{kind} '{name}': pattern {pattern[:60]!r} is not a regular expression ({e})"
        ) from None
    if isinstance(priority, str) and priority.lstrip("-").isdigit():
        priority = int(priority)  # rabbitmqctl and older rabbitmqadmins send it as text
    if isinstance(priority, bool) or not isinstance(priority, int) or \
            not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidArgumentError(f"{kind} '{name}': priority must be an integer")
    allowed = ("all", "queues") if operator else APPLY_TO
    if apply_to not in allowed:
        raise InvalidArgumentError(
            f"{kind} '{name}': apply-to must be one of {', '.join(allowed)}")
    if not isinstance(definition, dict) or not definition:
        raise InvalidArgumentError(f"{kind} '{name}': definition must be a non-empty object")
    warnings = [_check_key(kind, name, key, value, operator)
                for key, value in definition.items()]
    return Policy(vhost, name, pattern, dict(definition), priority, str(apply_to), operator,
                  tuple(w for w in warnings if w), regex)


def _check_key(kind: str, name: str, key: Any, value: Any, operator: bool) -> str | None:
    """Refuse a bad value; a warning for a key without effect here; None for one applied."""
    where = f"{kind} '{name}': definition key '{key}'"
    if operator and key not in OPERATOR_KEYS:
        raise InvalidArgumentError(
            f"{where} is not one an operator policy may set "
            f"({', '.join(sorted(OPERATOR_KEYS))})")
    if key in _INT_MINIMUM:
        if isinstance(value, bool) or not isinstance(value, int) or value < _INT_MINIMUM[key]:
            raise InvalidArgumentError(f"{where}: {str(value)[:40]!r} is not an integer >= "
                                       f"{_INT_MINIMUM[key]}")
    elif key in _STRINGS:
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{where}: {str(value)[:40]!r} is not a string")
    elif key in _CHOICES or key in WITHOUT_SETTING:
        allowed = _CHOICES.get(key) or WITHOUT_SETTING[key]
        if value not in allowed:
            raise InvalidArgumentError(f"{where}: {str(value)[:40]!r} is not one of "
                                       f"{', '.join(allowed)}")
    elif key == "max-age":
        age = parse_age(value) if isinstance(value, str) else None
        if age is None or age <= 0:
            raise InvalidArgumentError(f"{where}: {str(value)[:40]!r} is not an age such as "
                                       f"'7D' (units Y, M, D, h, m, s)")
    elif key in NO_EFFECT:
        return f"'{key}' has no effect in tidings (a single node without RabbitMQ's plugins)"
    else:
        return f"'{str(key)[:60]}' is not a key tidings knows; it has no effect"
    return None


class PolicySet:
    """The policies and operator policies of one vhost."""

    def __init__(self) -> None:
        self._policies: dict[str, Policy] = {}
        self._operator: dict[str, Policy] = {}

    def _table(self, operator: bool) -> dict[str, Policy]:
        return self._operator if operator else self._policies

    def put(self, policy: Policy) -> None:
        self._table(policy.operator)[policy.name] = policy

    def remove(self, name: str, operator: bool = False) -> Policy | None:
        return self._table(operator).pop(name, None)

    def find(self, name: str, operator: bool = False) -> Policy | None:
        return self._table(operator).get(name)

    def list(self, operator: bool = False) -> list[Policy]:
        return sorted(self._table(operator).values(), key=lambda p: p.name)

    def __bool__(self) -> bool:
        return bool(self._policies or self._operator)

    def matching(self, name: str, kind: str, operator: bool = False) -> Policy | None:
        """The policy that applies to ``name`` (highest priority, then first name)."""
        best: Policy | None = None
        for policy in self._table(operator).values():
            if policy.applies_to(name, kind) and (
                    best is None or (-policy.priority, policy.name) < (-best.priority, best.name)):
                best = policy
        return best


@dataclass(frozen=True, slots=True)
class Applied:
    """What policies made of one queue's or exchange's arguments."""

    arguments: dict[str, Any]
    policy: str | None = None
    operator_policy: str | None = None
    #: The definition keys in effect, with the values that won.
    definition: dict[str, Any] = field(default_factory=dict)


def queue_arguments(policies: PolicySet, name: str, queue_type: str,
                    arguments: dict[str, Any]) -> Applied:
    """The arguments a queue runs with: its own, merged with the policies that match it."""
    if not policies:
        return Applied(arguments)
    merged, effective = dict(arguments), {}
    policy = policies.matching(name, queue_type)
    operator = policies.matching(name, queue_type, operator=True)
    for source in (policy, operator):
        for key, value in (source.definition if source else {}).items():
            arg = QUEUE_KEYS.get(key)
            if arg is None or not _fits(key, queue_type):
                continue
            current = merged.get(arg)
            if current is None:
                merged[arg] = value
            elif key in SMALLER_WINS:
                merged[arg] = _smaller(key, current, value)
            effective[key] = merged[arg]
    return Applied(merged, policy.name if policy else None,
                   operator.name if operator else None, effective)


def exchange_alternate(policies: PolicySet, name: str, arguments: dict[str, Any]
                       ) -> tuple[str | None, str | None]:
    """An exchange's alternate exchange (its own argument wins) and the policy applied."""
    policy = policies.matching(name, "exchange") if policies else None
    own = arguments.get("alternate-exchange")
    if isinstance(own, str):
        return own, policy.name if policy else None
    if policy is None:
        return None, None
    return policy.definition.get("alternate-exchange"), policy.name


def _fits(key: str, queue_type: str) -> bool:
    if queue_type == "stream":
        return key in STREAM_KEYS
    return key not in ONLY_STREAM_KEYS


def _smaller(key: str, current: Any, value: Any) -> Any:
    if key == "max-age":
        mine, theirs = parse_age(current), parse_age(value)
        if mine is None or theirs is None:
            return current
        return current if mine <= theirs else value
    if isinstance(current, bool) or not isinstance(current, int):
        return current  # the queue's own bad argument is refused where it is parsed
    return min(current, value)
