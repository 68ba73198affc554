"""The dashboard's memory: samples of the node and of each queue kept on the server (a reload
shows the last minutes), waiting and processing time per interval rather than since the start;
and the first messages of a queue shown without taking them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tidings.auth import UserStore
from tidings.http.app import build_app
from tidings.http.history import KEEP
from tidings.message import Message
from tidings.routing.broker import Broker
from tidings.storage.memory import MemoryStore
from tidings.testing import FakeClock


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Broker, FakeClock, httpx.AsyncClient,
                                                         object]]:
    clock = FakeClock()
    broker = Broker(MemoryStore(), clock)
    broker.start()
    app = build_app(broker, UserStore(tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                 auth=("guest", "guest")) as client:
        yield broker, clock, client, app.state.gateway.history
    broker.close()


async def test_history_keeps_depth_and_per_interval_latency(gateway: tuple) -> None:
    broker, clock, api, history = gateway
    broker.declare_queue("/", "jobs")
    session = broker.open_session()
    for _ in range(3):
        broker.publish("/", "", Message(b"x", "jobs"))
    clock.advance(2.0)  # these waited two seconds
    for _ in range(3):
        d = broker.get(session, "jobs")
        assert d is not None
        session.ack(d.delivery_tag)
    history.sample(clock.time())
    broker.publish("/", "", Message(b"y", "jobs"))
    d = broker.get(session, "jobs")  # this one waited no time at all
    assert d is not None
    session.ack(d.delivery_tag)
    broker.publish("/", "", Message(b"z", "jobs"))
    history.sample(clock.time() + 5)
    body = (await api.get("/api/history/queues/%2F/jobs")).json()
    first, second = body["samples"]
    assert first["waiting_p50_ms"] >= 1500 and second["waiting_p99_ms"] < 100
    assert (first["ready"], second["ready"]) == (0, 1)
    node = (await api.get("/api/history")).json()
    assert body["interval_s"] == node["interval_s"] == 5.0
    assert [s["ready"] for s in node["samples"]] == [0, 1]
    for _ in range(KEEP + 5):
        history.sample(clock.time())
    assert len(history.of_queue("/", "jobs")) == KEEP  # bounded
    broker.delete_queue("/", "jobs")
    history.sample(clock.time())
    assert history.of_queue("/", "jobs") == []
    assert (await api.get("/api/history/queues/%2F/jobs")).status_code == 404


async def test_the_first_messages_are_shown_in_place(gateway: tuple) -> None:
    broker, _, api, _ = gateway
    broker.declare_queue("/", "peek")
    broker.publish("/", "", Message(b"one", "peek", headers={"h": "v"}, correlation_id="c1"))
    broker.publish("/", "", Message(b"\xff\x00", "peek"))
    shown = (await api.get("/api/queues/%2F/peek/messages", params={"limit": 5})).json()
    assert len(shown) == 2 and shown[0]["payload"] == "one"
    assert shown[0]["properties"]["headers"] == {"h": "v"}
    assert shown[0]["properties"]["correlation_id"] == "c1"
    assert shown[1]["payload_encoding"] == "base64"
    got = broker.get(broker.open_session(), "peek")
    assert got is not None and not got.redelivered  # shown, not taken and put back
    assert (await api.get("/api/queues/%2F/peek/messages", params={"limit": 0})
            ).status_code == 400
