"""The broker's transition commit: the instance row, the messages, the timers armed and
cancelled, and the event's ack happen together, survive a restart together, and a commit that
cannot be applied changes nothing."""

from __future__ import annotations

import pytest

from tidings.errors import NotFoundError, PreconditionFailedError
from tidings.message import Message
from tidings.routing.front_door import TransitionCommit

from ..conftest import BrokerFactory
from .helpers import drain, pub


async def test_a_transition_commits_its_row_messages_timers_and_ack_together(
        brokers: BrokerFactory) -> None:
    b = brokers.start()
    for q in ("machine.order", "shipping"):
        b.declare_queue("/", q)
    pub(b, "", "machine.order", "paid", message_id="e1")
    session = b.open_session()
    event = b.get(session, "machine.order")
    assert event is not None
    timer = Message(b"", "", message_id="order:o1:reminder:2",
                    headers={"x-machine-topic": "timer:reminder"})
    b.commit_transition(session, event.delivery_tag, TransitionCommit(
        "/", "order", "o1", b'{"state": "paid"}',
        messages=(("", Message(b"ship o1", "shipping")),),
        timers=(("machine.order", timer, 60_000),)))
    b = await brokers.restart()
    assert b.find_instance("/", "order", "o1") == b'{"state": "paid"}'
    assert b.list_instances("/", "order") == [("o1", b'{"state": "paid"}')]
    s = b.open_session()
    assert drain(b, s, "shipping") == [b"ship o1"]
    assert drain(b, s, "machine.order") == []  # the event was acked; the timer is not due
    [(_, armed)] = list(b.delayed.entries())
    assert armed.message.message_id == "order:o1:reminder:2"


async def test_a_commit_that_cannot_apply_changes_nothing(brokers: BrokerFactory) -> None:
    b = brokers.start()
    b.declare_queue("/", "machine.order")
    pub(b, "", "machine.order", "paid", message_id="e1")
    session = b.open_session()
    event = b.get(session, "machine.order")
    assert event is not None
    for commit, error in [
        (TransitionCommit("/", "order", "o1", b"{}", messages=(("nowhere", Message(b"x")),)),
         NotFoundError),
        (TransitionCommit("/", "order", "o1", b"{}",
                          timers=(("no-queue", Message(b"", message_id="t"), 5),)),
         NotFoundError),
    ]:
        with pytest.raises(error):
            b.commit_transition(session, event.delivery_tag, commit)
        assert b.find_instance("/", "order", "o1") is None
    with pytest.raises(PreconditionFailedError):
        b.commit_transition(session, 999, TransitionCommit("/", "order", "o1", b"{}"))
    session.nack(event.delivery_tag, requeue=True)  # still held: it can be settled
    assert drain(b, b.open_session(), "machine.order") == [b"paid"]


async def test_a_commit_computed_from_an_old_version_is_refused(brokers: BrokerFactory) -> None:
    b = brokers.start()
    b.declare_queue("/", "machine.order")
    session = b.open_session()
    b.commit_transition(session, None, TransitionCommit(
        "/", "order", "o1", b"v1", expected_version=0, version=1))
    b.commit_transition(session, None, TransitionCommit(
        "/", "order", "o1", b"v2", expected_version=1, version=2))
    with pytest.raises(PreconditionFailedError, match="moved on"):  # computed from version 1
        b.commit_transition(session, None, TransitionCommit(
            "/", "order", "o1", b"stale", expected_version=1, version=2))
    assert b.find_instance("/", "order", "o1") == b"v2"
