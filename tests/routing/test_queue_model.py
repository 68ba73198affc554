"""A Hypothesis state machine drives one queue (small paging window, restarts included) and
checks it against a plain reference model: a list of ready ids in publish order plus a map
of unacked ones. Whatever the interleaving, gets return the oldest ready message, nothing is
lost or duplicated, and restarts bring unacked messages back marked redelivered."""

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
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore()
        self._open()
        self.broker.declare_queue("/", "q")
        self.next_id = 0
        self.ready: list[int] = []  # ids in publish order
        self.unacked: dict[int, int] = {}  # delivery tag -> id
        self.delivered_once: set[int] = set()

    def _open(self) -> None:
        self.broker = Broker(self.store, self.clock, queue_window=4)
        self.broker.start()
        self.session: Session = self.broker.open_session()

    @rule(n=st.integers(1, 5))
    def publish(self, n: int) -> None:
        for _ in range(n):
            self.broker.publish("/", "", Message(str(self.next_id).encode(), "q"))
            self.ready.append(self.next_id)
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
        self.ready = sorted([*self.ready, mid])

    @precondition(lambda self: self.unacked)
    @rule(data=st.data())
    def reject_drop(self, data: st.DataObject) -> None:
        tag, _ = self._settle(data)
        self.session.reject(tag, requeue=False)

    @rule()
    def close_session(self) -> None:
        self.session.close()
        self.ready = sorted([*self.ready, *self.unacked.values()])
        self.unacked.clear()
        self.session = self.broker.open_session()

    @rule()
    def restart(self) -> None:
        self.broker.stop_timers()
        self.store = self.store.reopen()
        self._open()
        self.ready = sorted([*self.ready, *self.unacked.values()])
        self.unacked.clear()

    @invariant()
    def counts_agree(self) -> None:
        stats = self.broker.statistics().queue("q")
        assert stats.ready == len(self.ready)
        assert stats.unacked == len(self.unacked)


TestQueueAgainstModel = QueueMachine.TestCase
TestQueueAgainstModel.settings = settings(
    max_examples=max(150, settings.default.max_examples), stateful_step_count=40, deadline=None
)
