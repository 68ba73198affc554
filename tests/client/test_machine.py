"""The state machine definition and its pure step: one transition per event, redeliveries
recognised, timers that fire only while armed in their state, unknown instances and events a
state does not accept, and the picture. A Hypothesis test runs random event sequences (with
redeliveries and late timers) against a hand-written model of the same order flow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.client.machine import Event, Instance, Machine, Verdict, dump_data, load_data
from tidings.errors import ConfigError

from .order_machine import Order, model, order_machine

ROOT = Path(__file__).resolve().parents[2]


def ev(topic: str, ident: str, **body: object) -> Event:
    return Event(topic, ident, {"order_id": "o1", **body})


def test_an_order_goes_through_and_its_timer_is_cancelled() -> None:
    m = order_machine()
    step = m.step(None, ev("orders.submitted", "e1", amount=30))
    assert step.verdict is Verdict.APPLIED and step.instance is not None
    order = step.instance
    assert (order.state, order.version, order.data.amount) == ("submitted", 1, 30)
    [timer] = step.timers
    assert timer.id == "order:o1:payment:1" and timer.after_s == 1800
    assert order.timers == {"payment": ("order:o1:payment:1", "submitted")}
    short = m.step(order, ev("orders.paid", "e2", amount=20))  # the guard refuses it
    assert short.verdict is Verdict.NOT_ACCEPTED and "does not accept" in short.reason
    step = m.step(order, ev("orders.paid", "e3", amount=30))
    assert step.instance is not None and step.instance.state == "paid"
    assert step.instance.timers == {} and [t.after_s for t in step.timers] == [None]
    assert [(e.queue, e.body) for e in step.messages] == [("shipping", {"order_id": "o1"})]
    assert order.data.paid == 0  # the step never changes the instance it was given
    late = m.step(step.instance, Event("timer:payment", "order:o1:payment:1",
                                       {"order_id": "o1"}))
    assert late.verdict is Verdict.STALE  # cancelled: dropped, not applied
    again = m.step(step.instance, ev("orders.paid", "e3", amount=30))
    assert again.verdict is Verdict.DUPLICATE and again.instance is step.instance
    done = m.step(step.instance, ev("orders.shipped", "e4"))
    assert done.instance is not None and done.instance.state == "shipped"
    assert m.step(done.instance, ev("orders.paid", "e5", amount=1)).verdict is \
        Verdict.NOT_ACCEPTED  # a final state accepts nothing


def test_the_timer_fires_only_while_armed_in_its_state() -> None:
    m = order_machine()
    order = m.step(None, ev("orders.submitted", "e1", amount=5)).instance
    assert order is not None
    fired = m.step(order, Event("timer:payment", "order:o1:payment:1", {"order_id": "o1"}))
    assert fired.verdict is Verdict.APPLIED and fired.instance is not None
    assert fired.instance.state == "cancelled" and fired.instance.timers == {}
    assert [e.topic for e in fired.messages] == ["orders.cancelled"]
    forged = m.step(order, Event("timer:payment", "order:o1:payment:9", {"order_id": "o1"}))
    assert forged.verdict is Verdict.STALE  # not the id armed


def test_unknown_instances_and_the_unaccepted_rule() -> None:
    m = order_machine()
    unknown = m.step(None, ev("orders.paid", "e1", amount=1))
    assert unknown.verdict is Verdict.UNKNOWN_INSTANCE and unknown.instance is None
    assert "initial state 'new' does not accept 'orders.paid'" in unknown.reason
    lenient: Machine[Order] = Machine("m", key="order_id", initial="a", data=Order,
                                      on_unaccepted="ignore")
    lenient.transition("a", on="go", to="b")(lambda d, e, o: None)
    started = lenient.step(None, ev("go", "1")).instance
    assert lenient.step(started, ev("go", "2")).verdict is Verdict.IGNORED
    with pytest.raises(ConfigError, match="order_id"):
        m.key_of(Event("orders.paid", "x", {}))
    with pytest.raises(ConfigError, match="final state"):
        m.transition("shipped", on="x", to="y")


def test_the_picture_and_the_data_codec() -> None:
    m = order_machine()
    text = m.mermaid()
    assert text.startswith("stateDiagram-v2\n    [*] --> new\n")
    assert "    submitted --> cancelled: timer payment\n" in text
    assert "    submitted --> paid: orders.paid [guard]\n" in text
    assert "    shipped --> [*]\n" in text
    assert m.states == ["new", "submitted", "paid", "cancelled", "shipped"]
    order = Order(5, 0, ["x"])
    assert load_data(Order, dump_data(order)) == order


# -- random sequences against a model ---------------------------------------------------------


EVENTS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["orders.submitted", "orders.paid", "orders.shipped"]),
              st.sampled_from([f"e{i}" for i in range(6)]), st.integers(0, 3)),
    st.tuples(st.just("timer:payment"),
              st.sampled_from(["order:o1:payment:1", "order:o1:payment:2"]), st.just(0)),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_random_sequences_with_redeliveries_match_the_model(
        events: list[tuple[str, str, int]]) -> None:
    m = order_machine()
    instance: Instance[Order] | None = None
    applied, sent = 0, []
    for topic, ident, value in events:
        step = m.step(instance, ev(topic, ident, amount=value))
        if step.verdict is Verdict.APPLIED:
            applied += 1
            sent += [e.queue or e.topic or "" for e in step.messages]
            instance = step.instance
    state, expected_applied, expected_sent = model(events)
    assert (instance.state if instance else None, applied, sent) == \
        (state, expected_applied, expected_sent)
    if instance is not None:
        assert instance.version == instance.history == applied


def test_the_svg_picture_and_the_cli_that_draws_it(tmp_path: Path) -> None:
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from tidings.machine_diagram import svg

    picture = ET.fromstring(svg(order_machine().describe(), {"submitted": 3}))
    states = {g.get("data-state"): "".join(g.itertext()).strip() for g in picture.iter()
              if g.get("data-state")}
    assert states["submitted"] == "submitted (3)" and states["paid"] == "paid (0)"
    assert set(states) == set(order_machine().states)
    (tmp_path / "shop.py").write_text(
        "from tests.client.order_machine import order_machine\nmachine = order_machine()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "tidings", "machines", "graph", "shop:machine"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout == order_machine().mermaid(), out.stderr
    out = subprocess.run([sys.executable, "-m", "tidings", "machines", "graph", "shop:nothing",
                          "--svg"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 1 and "is not a tidings Machine" in out.stderr
