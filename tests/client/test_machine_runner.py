"""A machine run durably on the embedded broker (a real SQLite data directory): events move
instances one committed transition at a time, a transition's messages and timers go out with
it, a redelivered event is not applied twice, a timer fires only while armed, an event no
state takes is a dead letter with its reason, and instances survive closing and reopening."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidings
from tidings.errors import InvalidArgumentError, NotSupportedError

from ..serverproc import ServerProcess, running
from .order_machine import model, order_machine, three_orders_one_paid


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("machines")) / "data") as proc:
        yield proc


@contextlib.asynccontextmanager
async def opened(place: str, data: Path, request: pytest.FixtureRequest,
                 ) -> AsyncIterator[tidings.Client]:
    """A client on the embedded broker, on tidings serve, or joining a data directory another
    client owns (over the owner's socket)."""
    if place == "serve":
        server: ServerProcess = request.getfixturevalue("serve")
        async with tidings.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/") as client:
            yield client
    elif place == "joiner":
        async with tidings.connect(str(data)) as owner, tidings.connect(str(data)) as client:
            assert owner.transport.capabilities.broker != client.transport.capabilities.broker
            yield client
    else:
        async with tidings.connect(str(data)) as client:
            yield client


@pytest.mark.parametrize("place", ["embedded", "serve", "joiner"])
async def test_orders_move_one_committed_transition_per_event(
        tmp_path: Path, place: str, request: pytest.FixtureRequest) -> None:
    data = tmp_path / "data"
    async with opened(place, data, request) as client:
        runner = client.machine(order_machine(payment_s=0.3))
        await runner.start()

        async def state(key: str, wanted: str) -> bool:
            found = await runner.get(key)
            return found is not None and found.state == wanted

        await client.publish("orders.submitted", {"order_id": "o1", "amount": 30})
        await client.publish("orders.submitted", {"order_id": "o2", "amount": 5})
        await until(lambda: state("o1", "submitted"))
        await client.publish("orders.paid", {"order_id": "o1", "amount": 30}, message_id="pay-1")
        await client.publish("orders.paid", {"order_id": "o1", "amount": 30}, message_id="pay-1")
        await until(lambda: state("o1", "paid"))
        await until(lambda: state("o2", "cancelled"))  # its payment timer fired
        shipping = await client.get("shipping")
        assert shipping is not None and shipping.json() == {"order_id": "o1"}
        await shipping.ack()
        # o1's cancelled timer still comes when due, and is dropped unapplied
        await until(lambda: _counted(runner, "stale", 1))
        o1 = await runner.get("o1")
        assert o1 is not None and (o1.state, o1.version, o1.data.paid) == ("paid", 2, 30)
        assert [(r["from"], r["to"], r["on"], r["event"]) for r in o1.recent][1:] == [
            ("submitted", "paid", "orders.paid", "pay-1")]  # its last transitions, oldest first
        assert o1.recent[0]["to"] == "submitted" and o1.recent[0]["at"] > 1e9
        assert runner.counts["duplicate"] == 1
        assert await client.get("shipping") is None  # the duplicate sent nothing more
        await client.publish("orders.paid", {"order_id": "o9", "amount": 1})
        await until(lambda: _dead(client))
        [dead] = await client.dead_letters("machine.order")
        assert "no instance 'o9'" in dead.headers["x-machine-reason"]
        assert [i.key for i in await runner.list(state="paid")] == ["o1"]
        await runner.stop()
    async with opened(place, data, request) as client:  # kept across a reopen
        runner = client.machine(order_machine())
        o1 = await runner.get("o1")
        assert o1 is not None and o1.state == "paid" and o1.history == 2


async def _counted(runner: object, verdict: str, n: int) -> bool:
    return runner.counts[verdict] == n  # type: ignore[attr-defined, no-any-return]


async def _failed(runner: object, transition: str) -> bool:
    found = runner.transitions.get(transition)  # type: ignore[attr-defined]
    return found is not None and found.failures >= 1  # type: ignore[no-any-return]


async def _dead(client: tidings.Client) -> bool:
    return bool(await client.dead_letters("machine.order"))


async def test_a_broker_that_cannot_commit_with_the_event_says_so() -> None:
    from tidings.client.transport import Capabilities, WithoutMachines

    class Remote(WithoutMachines):
        capabilities = Capabilities("RabbitMQ 3.10")

    with pytest.raises(NotSupportedError, match=r"RabbitMQ 3\.10"):
        await Remote().commit_transition(None, None)  # type: ignore[arg-type]


async def test_instances_are_read_over_http_and_the_cli(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import httpx

    from tidings.auth import UserStore
    from tidings.http.app import build_app

    data = tmp_path / "data"
    async with tidings.connect(str(data)) as client:
        runner = await three_orders_one_paid(client)
        await client.publish("orders.submitted", {"order_id": "o5"})  # its handler raises
        await client.publish("orders.paid", {"order_id": "o9", "amount": 1})  # no such order
        await until(lambda: _counted(runner, "dead_lettered", 1))
        await until(lambda: _failed(runner, "new -> submitted on orders.submitted"))
        await runner.stop()
        broker = client.transport.broker  # type: ignore[attr-defined]
        app = build_app(broker, UserStore(data))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw", auth=("guest", "guest")) as api:
            [listed] = (await api.get("/api/machines")).json()
            assert (listed["name"], listed["instances"], listed["states"]) == \
                ("order", 3, {"paid": 1, "submitted": 2})
            assert 0 <= listed["oldest_s"]["submitted"] < 60
            metrics = (await api.get("/metrics")).text
            assert 'tidings_machine_instances{machine="order",state="submitted",vhost="/"} ' \
                   '2.0' in metrics
            numbers = runner.statistics()
            assert numbers["transitions"]["submitted -> paid on orders.paid"]["count"] == 1
            assert numbers["events"]["applied"] == 4
            assert numbers["transitions"]["new -> submitted on orders.submitted"][
                "commit_ms"]["count"] == 3
            # the broker's numbers: over every runner, committed transitions counted exactly
            served = (await api.get("/api/machines/%2F/order")).json()
            submitted = served["transitions"]["new -> submitted on orders.submitted"]
            assert (submitted["count"], submitted["commit_ms"]["count"],
                    submitted["handler_ms"]["count"]) == (3, 3, 3)
            assert submitted["failures"] >= 1 and isinstance(submitted["rate"], float)
            assert served["transitions"]["submitted -> paid on orders.paid"]["count"] == 1
            assert served["dead_lettered"] == 1
            assert ('tidings_machine_transitions_total{machine="order",transition="submitted -> '
                    'paid on orders.paid",vhost="/"} 1.0') in metrics
            assert 'tidings_machine_dead_letters_total{machine="order",vhost="/"} 1.0' in metrics
            assert 'tidings_machine_commit_seconds_count{machine="order",transition="new -> ' \
                   'submitted on orders.submitted",vhost="/"} 3.0' in metrics
            page = (await api.get("/api/machines/%2F/order",
                                  params={"state": "submitted", "page_size": 1})).json()
            assert (page["filtered_count"], [i["key"] for i in page["items"]]) == (2, ["o0"])
            one = (await api.get("/api/machines/%2F/order/o1")).json()
            assert (one["state"], one["data"]["paid"], one["version"]) == ("paid", 2, 2)
            assert [(r["from"], r["to"]) for r in one["recent_transitions"]] == [
                ("new", "submitted"), ("submitted", "paid")]
            assert (await api.get("/api/machines/%2F/order/nope")).status_code == 404
            drawn = await api.get("/api/machine-diagrams/%2F/order")
            assert drawn.headers["content-type"].startswith("image/svg+xml")
            assert "submitted (2)" in drawn.text and "paid (1)" in drawn.text
            described = (await api.get("/api/machines/%2F/order")).json()["description"]
            assert described["initial"] == "new" and len(described["transitions"]) == 4
            moved = await api.post("/api/machines/%2F/order/o2/move",
                                   json={"state": "paid", "reason": "paid by phone"})
            assert moved.json() == {"key": "o2", "state": "paid", "version": 2}
            assert (await api.post("/api/machines/%2F/order/o2/move",
                                   json={"state": "paid"})).status_code == 400
            assert (await api.get("/api/machines/%2F/other")).status_code == 404
    out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "machines",
                          "order", "--state", "paid"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["key", "state", "version", "history"]
    assert out.stdout.splitlines()[1].split() == ["o1", "paid", "2", "2"]
    shown = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data),
                            "machines", "order", "o0"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert json.loads(shown.stdout)["timers"]["payment"]["armed_in"] == "submitted"
    moved = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data),
                            "machines", "order", "o0", "--move-to", "cancelled", "--reason",
                            "customer called"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert moved.returncode == 0 and "moved to 'cancelled'" in moved.stdout, moved.stderr
    async with tidings.connect(str(data)) as client:  # the runner keeps the audit on
        runner = client.machine(order_machine())
        await runner.start()
        await client.publish("orders.shipped", {"order_id": "o2"})

        async def shipped() -> bool:
            o2 = await runner.get("o2")
            return o2 is not None and o2.state == "shipped"

        await until(shipped)
        o2, o0 = await runner.get("o2"), await runner.get("o0")
        assert o2 is not None and o0 is not None
        assert [(a["by"], a["from"], a["to"], a["reason"]) for a in o2.audit] == \
            [("guest", "submitted", "paid", "paid by phone")]
        assert o0.state == "cancelled" and o0.timers == {}
        assert o0.audit[0]["by"] == "tidings:control"  # the CLI, as the local operator
        await runner.stop()


async def test_an_instance_moved_under_a_runner_is_judged_as_it_is_now() -> None:
    """The runner remembers the instances it committed; when an operator moves one, the
    next transition judged on its memory is refused by the broker, and the event is judged
    again on the stored instance (here: cancelled, which takes no payment)."""
    from tidings.transitions import TransitionCommit, moved_row

    async with tidings.connect("memory://") as client:
        runner = client.machine(order_machine())
        await runner.start()
        await client.publish("orders.submitted", {"order_id": "o1", "amount": 1})
        await until(lambda: _counted(runner, "applied", 1))
        broker = client.transport.broker  # type: ignore[attr-defined]
        moved, version = moved_row(broker.find_instance("/", "order", "o1"), "cancelled",
                                   "ops", "customer called", 0.0)
        broker.commit_transition(broker.open_session(), None, TransitionCommit(
            "/", "order", "o1", moved, expected_version=version - 1, version=version))
        await client.publish("orders.paid", {"order_id": "o1", "amount": 1})
        await until(lambda: _dead(client))
        assert runner.counts["conflicts"] == 1 and runner.counts["applied"] == 1
        o1 = await runner.get("o1")
        assert o1 is not None and (o1.state, o1.version) == ("cancelled", 2)
        assert await client.get("shipping") is None
        await runner.stop()


async def test_one_runner_at_a_time_and_the_next_takes_over(tmp_path: Path) -> None:
    """Two runners of one machine (two worker processes, here two clients of one data
    directory): one consumes, the other waits; when the first stops, the second goes on from
    the instances as the broker has them."""
    async with tidings.connect(str(tmp_path / "data")) as client, \
            tidings.connect(str(tmp_path / "data")) as other:
        first, second = client.machine(order_machine()), other.machine(order_machine())
        await first.start()
        await second.start()
        for i in range(5):
            await client.publish("orders.submitted", {"order_id": f"o{i}", "amount": 1})

        async def states(wanted: str) -> bool:
            return [i.state for i in await first.list()] == [wanted] * 5

        await until(lambda: states("submitted"))
        assert first.counts["applied"] == 5 and second.counts["applied"] == 0
        await first.stop()
        for i in range(5):
            await client.publish("orders.paid", {"order_id": f"o{i}", "amount": 1})
        await until(lambda: states("paid"))

        async def second_applied() -> bool:  # (its counts follow its confirms)
            return second.counts["applied"] == 5

        await until(second_applied)
        assert first.counts["applied"] == 5
        await second.stop()


async def test_a_client_runs_a_machine_once() -> None:
    """Asking a client for a machine it already runs gives the same runner (reading instances
    needs no second consumer); another version gets its own (to replay through it); other
    options are refused."""
    async with tidings.connect("memory://") as client:
        machine = order_machine()
        runner = client.machine(machine)
        assert client.machine(machine) is runner
        assert client.machine(order_machine()) is runner  # the same machine, defined again
        with pytest.raises(InvalidArgumentError, match="already runs machine 'order'"):
            client.machine(machine, partitions=2)
        upgraded = client.machine(order_machine(version=2))
        assert upgraded is not runner and client.machine(order_machine(version=2)) is upgraded
        client.machines.remove(upgraded)  # (only read here: not started)
        await client.start()
        assert client.machines == [runner]
        await client.publish("orders.submitted", {"order_id": "o1", "amount": 1})

        async def submitted() -> bool:
            return [i.state for i in await runner.list()] == ["submitted"]

        await until(submitted)
        await client.stop()


OPS = st.lists(st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["o0", "o1", "o2"]),
              st.sampled_from(["orders.submitted", "orders.paid", "orders.shipped"]),
              st.sampled_from(["e0", "e1", "e2", "e3"]), st.integers(0, 2)),
    st.tuples(st.just("failover"), st.just(""), st.just(""), st.just(""), st.just(0)),
), max_size=30)


@pytest.mark.parametrize("partitions", [1, 3])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_durable_runner_matches_the_model_across_redeliveries_and_failovers(
        partitions: int, ops: list[tuple[str, str, str, str, int]]) -> None:
    """Random events (the same ids again: redeliveries) and hand-overs between runners (with
    partitions, two runners at work at once): the instances and the messages sent equal the
    plain model's, event by event in publish order (one consumer at a time per instance
    keeps that order)."""
    async def run() -> tuple[dict[str, tuple[str, int]], int]:
        async with tidings.connect("memory://") as client:

            def machine() -> Any:
                return client.machine(order_machine(), partitions=partitions)

            async def idle() -> bool:
                stats = await client.statistics()
                return all(q.ready == q.unacked == 0 for q in stats.queues
                           if q.name.startswith("machine.order")
                           and not q.name.endswith(".dead"))

            declared = machine()
            await declared.start()  # its queue and bindings stay: events wait for a runner
            await declared.stop()
            runner = standby = None
            for kind, key, topic, ident, amount in [*ops, ("failover", "", "", "", 0)]:
                if kind == "event":
                    await client.publish(topic, {"order_id": key, "amount": amount,
                                                 "pay_within_s": 3600},
                                         message_id=f"{key}-{ident}")
                    continue
                if runner is None:  # the first events wait in the queue: a backlog to take
                    runner = machine()
                    standby = machine()
                    await runner.start()
                    await standby.start()
                await until(idle)
                await runner.stop()  # a hand-over: the standby goes on, a new one waits
                runner, standby = standby, machine()
                await standby.start()
            assert runner is not None and standby is not None
            found = {i.key: (i.state, i.history) for i in await runner.list()}
            shipped = 0
            while (m := await client.get("shipping")) is not None:
                shipped += 1
                await m.ack()
            await runner.stop()
            await standby.stop()
            return found, shipped

    found, shipped = asyncio.run(run())
    expected, expected_shipped = {}, 0
    for key in ("o0", "o1", "o2"):
        events = [(topic, ident, amount) for kind, k, topic, ident, amount in ops
                  if kind == "event" and k == key]
        state, applied, sent = model(events)
        if state is not None:
            expected[key] = (state, applied)
        expected_shipped += sent.count("shipping")
    assert (found, shipped) == (expected, expected_shipped)
