"""Permissions hold on every HTTP path: dead letters, leases, listings and metrics show and
touch only what the caller may (RabbitMQ's rules, its management tags for seeing all)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pika
import pytest

from ..serverproc import ServerProcess
from .test_gateway import is_error


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = Path(tmp_path_factory.mktemp("permissions")) / "data"
    run = [sys.executable, "-m", "tidings", "--data-dir", str(data)]
    for args in (["users", "add", "alice", "pw-a"], ["users", "add", "bob", "pw-b"],
                 ["users", "add", "carol", "pw-c"], ["users", "add", "mon", "pw-m"],
                 ["vhosts", "add", "other"],
                 ["users", "set-permissions", "alice", "^alice-.*", "^alice-.*", "^alice-.*"],
                 ["users", "set-permissions", "bob", "^bob-.*", "^(bob-.*|amq\\.default)$",
                  "^bob-.*"],
                 ["users", "set-permissions", "carol", ".*", ".*", ".*", "--vhost", "other"],
                 ["users", "set-tags", "mon", "monitoring"]):
        subprocess.run([*run, *args], check=True, timeout=60, capture_output=True)
    proc = ServerProcess(data).start()
    yield proc
    proc.stop()


def client(server: ServerProcess, user: str, password: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", auth=(user, password),
                        timeout=10)


def test_dead_letter_endpoints_check_read_on_the_dead_letter_queue(server: ServerProcess) -> None:
    with client(server, "bob", "pw-b") as bob, client(server, "alice", "pw-a") as alice:
        bob.put("/api/queues/%2F/bob-jobs", json={}).raise_for_status()
        bob.post("/api/queues/%2F/bob-jobs/messages", json={"body": "bob's secret"})
        # alice names bob's queue as where her dead letters go ...
        alice.put("/api/queues/%2F/alice-trap", json={"arguments": {
            "x-dead-letter-exchange": "alice-dlx", "x-dead-letter-routing-key": "bob-jobs"}})
        # ... but reading dead letters needs read on the queue they are in
        bob.put("/api/queues/%2F/bob-x", json={"arguments": {
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "bob-jobs"}})
        assert len(bob.get("/api/queues/%2F/bob-x/dead-letters").json()) == 1
        is_error(alice.get("/api/queues/%2F/bob-x/dead-letters"), 403, "access_refused")
        is_error(alice.post("/api/queues/%2F/bob-x/dead-letters/replay", json={}), 403,
                 "access_refused")
        is_error(alice.delete("/api/queues/%2F/bob-x/dead-letters"), 403, "access_refused")
        assert bob.get("/api/queues/%2F/bob-jobs").json()["ready"] == 1


def test_declaring_a_dead_letter_exchange_needs_write_on_it(server: ServerProcess) -> None:
    with client(server, "alice", "pw-a") as alice:
        body = is_error(alice.put("/api/queues/%2F/alice-q", json={"arguments": {
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "bob-jobs"}}), 403,
            "access_refused")
        assert "write access to exchange 'amq.default'" in body["message"]
        is_error(alice.put("/api/queues/%2F/alice-q2", json={"arguments": {
            "x-dead-letter-exchange": "bob-exchange"}}), 403, "access_refused")
        alice.put("/api/queues/%2F/alice-q3", json={"arguments": {
            "x-dead-letter-exchange": "alice-dlx"}}).raise_for_status()


def test_leases_belong_to_the_user_who_received(server: ServerProcess) -> None:
    with client(server, "bob", "pw-b") as bob, client(server, "guest", "guest") as guest:
        bob.put("/api/queues/%2F/bob-leased", json={}).raise_for_status()
        bob.post("/api/queues/%2F/bob-leased/messages", json={"body": "m"})
        [m] = bob.post("/api/queues/%2F/bob-leased/receive", json={}).json()["messages"]
        is_error(guest.post(f"/api/receipts/{m['receipt']}/ack"), 404, "not_found")
        is_error(guest.post(f"/api/receipts/{m['receipt']}/nack", json={}), 404, "not_found")
        is_error(guest.post(f"/api/receipts/{m['receipt']}/extend", json={}), 404, "not_found")
        assert bob.post(f"/api/receipts/{m['receipt']}/ack").json() == {"status": "acked"}


def test_listings_show_only_the_callers_vhosts_unless_tagged(server: ServerProcess) -> None:
    amqp = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    with amqp, client(server, "guest", "guest") as guest, \
            client(server, "carol", "pw-c") as carol:  # guest's AMQP connection is in '/'
        guest.put("/api/queues/%2F/guest-visible", json={}).raise_for_status()
        assert len(guest.get("/api/connections").json()) == 1
        carol.put("/api/queues/other/carol-q", json={}).raise_for_status()
        queues = carol.get("/api/queues").json()
        assert {q["vhost"] for q in queues} == {"other"}
        assert {e["vhost"] for e in carol.get("/api/exchanges").json()} == {"other"}
        assert {b["vhost"] for b in carol.get("/api/bindings").json()} <= {"other"}
        overview = carol.get("/api/overview").json()
        assert overview["queues"] == 1 and overview["connections"] == 0  # none in 'other'
        assert carol.get("/api/connections").json() == []
        is_error(carol.get("/api/quarantine"), 403, "access_refused")  # administrators only
        is_error(carol.post("/api/definitions", json={}), 403, "access_refused")
        assert {v["name"] for v in carol.get("/api/definitions").json()["vhosts"]} == {"other"}
        metrics = carol.get("/metrics").text
        assert 'queue="carol-q"' in metrics and 'queue="guest-visible"' not in metrics
    for user, password in (("guest", "guest"), ("mon", "pw-m")):  # administrator, monitoring
        with client(server, user, password) as seer:
            names = {q["name"] for q in seer.get("/api/queues").json()}
            assert {"guest-visible", "carol-q"} <= names
            assert "tidings.http.event-log" not in names  # the gateway's own queue is hidden


def test_metrics_on_their_own_port_need_no_credentials(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--prometheus-port", "0").start()
    try:
        with client(server, "guest", "guest") as guest:
            guest.put("/api/queues/%2F/scraped", json={}).raise_for_status()
        base = f"http://127.0.0.1:{server.metrics_port}"
        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'tidings_queue_messages_ready{queue="scraped",vhost="/"} 0.0' in text
        assert httpx.get(f"{base}/api/queues", timeout=10).status_code == 404  # nothing else
        assert httpx.get(f"http://127.0.0.1:{server.http_port}/metrics",
                         timeout=10).status_code == 401  # the gateway still asks
    finally:
        server.stop()


def test_encryption_keys_are_for_administrators_only(server: ServerProcess) -> None:
    for user, password in (("mon", "pw-m"), ("alice", "pw-a")):
        with client(server, user, password) as http:
            for method, path in (("GET", "/api/tidings/keys"),
                                 ("POST", "/api/tidings/keys/rotate")):
                is_error(http.request(method, path), 403, "access_refused")
    with client(server, "guest", "guest") as http:  # an administrator, on a plain directory
        status = http.get("/api/tidings/keys")
        assert status.status_code == 200 and status.json()["data_keys"] == {}
        body = is_error(http.post("/api/tidings/keys/rotate"), 409, "precondition_failed")
        assert "without a keyring" in body["message"]
