"""Every group of gateway endpoints, in process through the ASGI app (no socket, no server
process): the endpoints are module-level functions that find the broker in the app's state.
The same endpoints over a real socket are exercised by test_gateway.py and test_permissions.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tidings.auth import UserStore
from tidings.http.app import ROUTES, build_app
from tidings.http.endpoints import (
    access,
    admin,
    dead_letters,
    events,
    leases,
    machines,
    metrics,
    policies,
    queues,
    rabbitmq,
)
from tidings.routing.broker import Broker
from tidings.storage.memory import MemoryStore

Q = "/api/queues/%2F"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    broker = Broker(MemoryStore())
    broker.start()
    app = build_app(broker, UserStore(tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                 auth=("guest", "guest")) as client:
        yield client
    broker.close()


def test_the_route_table_names_module_level_endpoints() -> None:
    modules = (access, admin, dead_letters, events, leases, machines, metrics, policies,
               queues, rabbitmq)
    endpoints = [getattr(r, "endpoint", None) for r in ROUTES]
    assert all(e is None or e.__module__ in {m.__name__ for m in modules} for e in endpoints)
    assert {e.__module__ for e in endpoints if e is not None} == {m.__name__ for m in modules}


async def test_queues_and_leases_in_process(api: httpx.AsyncClient) -> None:
    assert (await api.put(f"{Q}/jobs", json={})).status_code == 201
    assert (await api.put(f"{Q}/jobs", json={})).status_code == 200
    sent = await api.post(f"{Q}/jobs/messages", json={"body": "one"})
    assert sent.status_code == 201
    listed = (await api.get("/api/queues")).json()
    assert [(q["name"], q["messages_ready"]) for q in listed] == [("jobs", 1)]
    got = (await api.post(f"{Q}/jobs/receive", json={"max": 5})).json()["messages"]
    assert [m["body"] for m in got] == ["one"]
    receipt = got[0]["receipt"]
    assert (await api.post(f"/api/receipts/{receipt}/extend", json={})).status_code == 200
    assert (await api.post(f"/api/receipts/{receipt}/nack", json={})).status_code == 200
    again = (await api.post(f"{Q}/jobs/receive", json={})).json()["messages"]
    assert again[0]["redelivered"] is True
    assert (await api.post(f"/api/receipts/{again[0]['receipt']}/ack")).status_code == 200
    assert (await api.post(f"/api/receipts/{again[0]['receipt']}/ack")).status_code == 404
    assert (await api.get(f"{Q}/jobs")).json()["messages_unacknowledged"] == 0
    assert (await api.delete(f"{Q}/jobs")).json() == {"deleted": "jobs", "messages": 0}
    missing = await api.post(f"{Q}/jobs/messages", json={"body": "x"})
    assert missing.status_code == 404 and "no queue 'jobs'" in missing.json()["message"]


async def test_long_poll_receive_is_woken_by_a_send(api: httpx.AsyncClient) -> None:
    await api.put(f"{Q}/later", json={})
    waiting = asyncio.ensure_future(api.post(f"{Q}/later/receive", json={"wait_ms": 5000}))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await api.post(f"{Q}/later/messages", json={"body": "now"})
    got = (await asyncio.wait_for(waiting, 5)).json()["messages"]
    assert [m["body"] for m in got] == ["now"]


async def test_dead_letters_in_process(api: httpx.AsyncClient) -> None:
    await api.put(f"{Q}/work.dead", json={})
    await api.put(f"{Q}/work", json={"arguments": {"x-dead-letter-exchange": "",
                                                   "x-dead-letter-routing-key": "work.dead"}})
    for body in ("a", "b"):
        await api.post(f"{Q}/work/messages", json={"body": body})
    for m in (await api.post(f"{Q}/work/receive", json={"max": 2})).json()["messages"]:
        await api.post(f"/api/receipts/{m['receipt']}/nack", json={"requeue": False})
    listed = (await api.get(f"{Q}/work/dead-letters")).json()
    assert [m["body"] for m in listed] == ["a", "b"]
    replayed = await api.post(f"{Q}/work/dead-letters/replay", json={"ids": [listed[0]["id"]]})
    assert replayed.json() == {"replayed": 1}
    assert (await api.delete(f"{Q}/work/dead-letters")).json() == {"purged": 1}
    assert (await api.get(f"{Q}/work")).json()["messages_ready"] == 1
    bad = await api.get(f"{Q}/work/dead-letters?limit=many")
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


async def test_events_admin_and_metrics_in_process(api: httpx.AsyncClient) -> None:
    await api.put(f"{Q}/audit", json={})
    bound = await api.post("/api/bindings/%2F", json={
        "source": "tidings.events", "destination": "audit", "routing_key": "orders.#"})
    assert bound.status_code == 404  # the events exchange exists once an event was posted
    accepted = await api.post("/events/orders.created", json={"id": 7})
    assert accepted.status_code == 202
    bound = await api.post("/api/bindings/%2F", json={
        "source": "tidings.events", "destination": "audit", "routing_key": "orders.#"})
    assert bound.status_code == 201
    await api.post("/event", json={"type": "orders.paid", "data": {"id": 7}})
    assert (await api.get(f"{Q}/audit")).json()["messages_ready"] == 1
    assert ("tidings.events", "audit") in [(b["source"], b["destination"])
                                           for b in (await api.get("/api/bindings")).json()]
    assert "tidings.events" in [e["name"] for e in (await api.get("/api/exchanges")).json()]
    bad = await api.post("/events/x", content=b"{", headers={"content-type":
                                                             "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    overview = (await api.get("/api/overview")).json()
    assert overview["counts"]["published"] == 2 and overview["ready"] == 1
    text = (await api.get("/metrics")).text
    assert 'tidings_queue_messages_ready{queue="audit",vhost="/"} 1.0' in text
    definitions = (await api.get("/api/definitions")).json()
    assert "audit" in [q["name"] for q in definitions["queues"]]
    assert (await api.get("/healthz")).json() == {"status": "ok"}
