"""A Hypothesis state machine drives one queue (small paging window, restarts included) and
checks it against a plain reference model: a list of ready ids in delivery order plus a map
of unacked ones. Whatever the interleaving, gets return the oldest ready message, nothing is
lost or duplicated, and restarts bring unacked messages back marked redelivered. The second
machine does the same on a priority queue (each level pages on its own): the highest priority
first, oldest first within it."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.routing.session import Session
from tidings.storage import MemoryStore
from tidings.testing import FakeClock


class QueueMachine(RuleBasedStateMachine):
    max_priority: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore()
        self._open()
        arguments = {} if self.max_priority is None else {"x-max-priority": self.max_priority}
        self.broker.declare_queue("/", "q", arguments=arguments)
        self.next_id = 0
        self.ready: list[int] = []  # ids in delivery order
        self.unacked: dict[int, int] = {}  # delivery tag -> id
        self.delivered_once: set[int] = set()
        self.priority: dict[int, int] = {}  # id -> effective priority

    def _in_order(self, ids: list[int]) -> list[int]:
        return sorted(ids, key=lambda i: (-self.priority[i], i))

    def _open(self) -> None:
        self.broker = Broker(self.store, self.clock, queue_window=4)
        self.broker.start()
        self.session: Session = self.broker.open_session()

    @rule(priorities=st.lists(st.integers(0, 5), min_size=1, max_size=5))
    def publish(self, priorities: list[int]) -> None:
        for priority in priorities:
            message = Message(str(self.next_id).encode(), "q", priority=priority)
            self.broker.publish("/", "", message)
            self.priority[self.next_id] = min(priority, self.max_priority or 0)
            self.ready = self._in_order([*self.ready, self.next_id])
            self.next_id += 1

    @rule()
    def get(self) -> None:
        d = self.broker.get(self.session, "q")
        if not self.ready:
            assert d is None
            return
        expected = self.ready.pop(0)
        assert d is not None and int(d.message.body) == expected
        assert d.redelivered == (expected in self.delivered_once)
        self.delivered_once.add(expected)
        self.unacked[d.delivery_tag] = expected

    def _settle(self, data: st.DataObject) -> tuple[int, int]:
        tag = data.draw(st.sampled_from(sorted(self.unacked)))
        return tag, self.unacked.pop(tag)

    @precondition(lambda self: self.unacked)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        tag, _ = self._settle(data)
        self.session.ack(tag)

    @precondition(lambda self: self.unacked)
    @rule(data=st.data())
    def nack_requeue(self, data: st.DataObject) -> None:
        tag, mid = self._settle(data)
        self.session.nack(tag, requeue=True)
        self.ready = self._in_order([*self.ready, mid])

    @precondition(lambda self: self.unacked)
    @rule(data=st.data())
    def reject_drop(self, data: st.DataObject) -> None:
        tag, _ = self._settle(data)
        self.session.reject(tag, requeue=False)

    @rule()
    def close_session(self) -> None:
        self.session.close()
        self.ready = self._in_order([*self.ready, *self.unacked.values()])
        self.unacked.clear()
        self.session = self.broker.open_session()

    @rule()
    def restart(self) -> None:
        self.broker.stop_timers()
        self.store = self.store.reopen()
        self._open()
        self.ready = self._in_order([*self.ready, *self.unacked.values()])
        self.unacked.clear()

    @invariant()
    def counts_agree(self) -> None:
        stats = self.broker.statistics().queue("q")
        assert stats.ready == len(self.ready)
        assert stats.unacked == len(self.unacked)


class PriorityQueueMachine(QueueMachine):
    max_priority = 3  # priorities above it count as 3, as in RabbitMQ


_settings = settings(
    max_examples=max(150, settings.default.max_examples), stateful_step_count=40, deadline=None
)
TestQueueAgainstModel = QueueMachine.TestCase
TestQueueAgainstModel.settings = _settings
TestPriorityQueueAgainstModel = PriorityQueueMachine.TestCase
TestPriorityQueueAgainstModel.settings = _settings
