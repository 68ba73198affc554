"""Policies as RabbitMQ applies them: by pattern and priority, to queues existing and future,
with its precedence between a policy and a queue's own arguments, kept across restarts."""

from __future__ import annotations

import pytest

from tidings.errors import InvalidArgumentError, NotFoundError
from tidings.routing.front_door import make_policy
from tidings.testing import FakeClock

from ..conftest import BrokerFactory
from .helpers import drain, pub


async def test_a_policy_limits_existing_and_future_queues_and_dead_letters_the_overflow(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "dlq")
    b.declare_queue("/", "jobs.a")
    b.declare_queue("/", "other")
    for i in range(5):
        pub(b, "", "jobs.a", f"m{i}")
        pub(b, "", "other", f"o{i}")
    b.set_policy(make_policy("/", "cap", r"^jobs\.", {"max-length": 2,
                                                      "dead-letter-exchange": "",
                                                      "dead-letter-routing-key": "dlq"}))
    s = b.open_session()
    # applied at once to the queue that exists: the three oldest are dead-lettered
    assert drain(b, s, "jobs.a") == [b"m3", b"m4"]
    assert drain(b, s, "dlq") == [b"m0", b"m1", b"m2"]
    assert len(drain(b, s, "other")) == 5  # the pattern does not match it
    b.declare_queue("/", "jobs.b")  # a queue declared later runs with it too
    for i in range(3):
        pub(b, "", "jobs.b", f"n{i}")
    assert drain(b, s, "jobs.b") == [b"n1", b"n2"]
    info = b.describe_queue("/", "jobs.b")
    assert info.policy == "cap" and info.effective_policy_definition["max-length"] == 2
    assert info.arguments == {}  # what the client declared is unchanged (redeclare stays ok)
    b.declare_queue("/", "jobs.b")
    b.delete_policy("/", "cap")
    for i in range(4):
        pub(b, "", "jobs.b", f"p{i}")
    assert len(drain(b, s, "jobs.b")) == 4
    assert b.describe_queue("/", "jobs.b").policy is None


async def test_smaller_limit_wins_and_the_queue_argument_wins_for_dead_lettering(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "q1", arguments={"x-max-length": 10, "x-dead-letter-exchange": "own"})
    b.declare_queue("/", "q2", arguments={"x-max-length": 1})
    b.set_policy(make_policy("/", "p", ".*", {"max-length": 3, "dead-letter-exchange": "pol",
                                              "message-ttl": 5000}))
    q1, q2 = b.get_queue("/", "q1"), b.get_queue("/", "q2")
    assert q1.options.max_length == 3 and q2.options.max_length == 1
    assert q1.options.dead_letter_exchange == "own" and q2.options.dead_letter_exchange == "pol"
    assert q1.options.message_ttl_ms == 5000
    # an operator policy caps what both allow
    b.set_policy(make_policy("/", "cap", ".*", {"max-length": 2, "message-ttl": 9000},
                             operator=True))
    assert q1.options.max_length == 2 and q1.options.message_ttl_ms == 5000
    assert b.describe_queue("/", "q1").operator_policy == "cap"


async def test_highest_priority_policy_applies_and_apply_to_is_honoured(
    brokers: BrokerFactory,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "orders")
    b.declare_exchange("/", "orders.x", "direct")
    b.declare_exchange("/", "lost", "fanout")
    b.declare_queue("/", "lost-q")
    b.bind("/", "lost", "lost-q")
    b.set_policy(make_policy("/", "low", "orders", {"max-length": 7}, priority=1))
    b.set_policy(make_policy("/", "high", "orders", {"max-length": 4}, priority=5,
                             apply_to="queues"))
    b.set_policy(make_policy("/", "ae", "orders", {"alternate-exchange": "lost"}, priority=9,
                             apply_to="exchanges"))
    assert b.describe_queue("/", "orders").policy == "high"
    assert b.get_queue("/", "orders").options.max_length == 4
    assert pub(b, "orders.x", "nobody", "x").routed == 1  # to the policy's alternate exchange
    assert drain(b, b.open_session(), "lost-q") == [b"x"]
    assert [e.policy for e in b.list_exchanges("/") if e.name == "orders.x"] == ["ae"]


async def test_stream_keys_apply_to_streams_only(brokers: BrokerFactory) -> None:
    b = brokers.start()
    b.declare_queue("/", "log", arguments={"x-queue-type": "stream"})
    b.declare_queue("/", "work")
    b.set_policy(make_policy("/", "ret", ".*", {"max-age": "1h", "max-length": 5,
                                                "stream-max-segment-size-bytes": 4096}))
    log, work = b.get_queue("/", "log"), b.get_queue("/", "work")
    assert log.options.max_age_ms == 3_600_000 and log.options.max_length is None
    assert log.log.max_segment_bytes == 4096  # type: ignore[attr-defined]
    assert work.options.max_age_ms is None and work.options.max_length == 5


async def test_policies_survive_a_restart_and_apply_to_recovered_queues(
    brokers: BrokerFactory, clock: FakeClock,
) -> None:
    b = brokers.start()
    b.declare_queue("/", "jobs")
    b.set_policy(make_policy("/", "cap", "^jobs$", {"max-length": 1, "ha-mode": "all"},
                             priority=3))
    b.set_policy(make_policy("/", "op", ".*", {"expires": 60_000}, operator=True))
    b = await brokers.restart()
    [policy] = b.list_policies("/")
    assert (policy.name, policy.priority, policy.definition["max-length"]) == ("cap", 3, 1)
    assert [p.name for p in b.list_policies("/", operator=True)] == ["op"]
    q = b.get_queue("/", "jobs")
    assert q.options.max_length == 1 and q.options.expires_ms == 60_000
    b.delete_policy("/", "cap")
    b = await brokers.restart()
    assert b.list_policies("/") == [] and b.get_queue("/", "jobs").options.max_length is None


def test_bad_policies_are_refused_and_keys_without_effect_are_reported() -> None:
    for bad in [dict(pattern="("), dict(definition={}), dict(definition={"max-length": -1}),
                dict(definition={"overflow": "sometimes"}), dict(apply_to="bindings"),
                dict(priority="high"), dict(definition={"max-age": "forever"})]:
        args = {"pattern": ".*", "definition": {"max-length": 1}, **bad}
        with pytest.raises(InvalidArgumentError):
            make_policy("/", "p", args["pattern"], args["definition"],
                        args.get("priority", 0), args.get("apply_to", "all"))
    with pytest.raises(InvalidArgumentError, match="operator policy"):
        make_policy("/", "p", ".*", {"dead-letter-exchange": "x"}, operator=True)
    p = make_policy("/", "p", ".*", {"ha-mode": "all", "federation-upstream-set": "all",
                                     "frobnicate": 1, "queue-mode": "lazy", "max-length": 3})
    assert len(p.warnings) == 3 and any("ha-mode" in w for w in p.warnings)
    assert make_policy("/", "p", ".*", {"max-length": 1}, "4").priority == 4


async def test_deleting_a_missing_policy_is_not_found(brokers: BrokerFactory) -> None:
    b = brokers.start()
    with pytest.raises(NotFoundError):
        b.delete_policy("/", "nope")
    with pytest.raises(NotFoundError):
        b.set_policy(make_policy("no-such-vhost", "p", ".*", {"max-length": 1}))
