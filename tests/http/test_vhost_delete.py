"""Deleting a vhost deletes everything in it, as RabbitMQ does: its queues and their messages,
its exchanges and bindings, its policies and its state machine instances; a vhost of the
same name made again starts empty, also after a restart. Over the management API and with
``tidings vhosts delete`` (on a running server, and with none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from ..serverproc import ServerProcess

BUILT_IN = {"", "amq.direct", "amq.fanout", "amq.headers", "amq.match", "amq.topic",
            "amq.rabbitmq.trace", "amq.tidings.control", "amq.tidings.delayed"}


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _fill(api: httpx.Client) -> None:
    """A vhost with a queue holding a message, a topic exchange bound to it, a policy."""
    assert api.put("/api/vhosts/shop").status_code in (201, 204)
    assert api.put("/api/permissions/shop/guest",
                   json={"configure": ".*", "write": ".*", "read": ".*"}).status_code < 300
    assert api.put("/api/exchanges/shop/orders", json={"type": "topic"}).status_code < 300
    assert api.put("/api/queues/shop/billing", json={"durable": True}).status_code < 300
    assert api.post("/api/bindings/shop/e/orders/q/billing",
                    json={"routing_key": "#"}).status_code < 300
    assert api.put("/api/policies/shop/limit", json={
        "pattern": ".*", "definition": {"max-length": 10}}).status_code < 300
    routed = api.post("/api/exchanges/shop/orders/publish", json={
        "routing_key": "o.1", "payload": "card 4111", "payload_encoding": "string",
        "properties": {"delivery_mode": 2}})
    assert routed.json()["routed"] is True


def _contents(api: httpx.Client) -> tuple[set[str], list[str], list[str]]:
    def names(path: str) -> list[str]:
        return [x["name"] for x in api.get(path).json() if x["vhost"] == "shop"]

    exchanges = set(names("/api/exchanges")) - BUILT_IN
    return exchanges, names("/api/queues"), names("/api/policies")


def test_a_deleted_vhost_takes_its_contents_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                          auth=("guest", "guest"), timeout=10) as api:
            _fill(api)
            assert _contents(api) == ({"orders"}, ["billing"], ["limit"])
            assert api.delete("/api/vhosts/shop").status_code == 204
            assert api.get("/api/vhosts/shop").status_code == 404
            _fill(api)  # made again: what was in it before is gone
            assert _contents(api) == ({"orders"}, ["billing"], ["limit"])
            [queue] = [q for q in api.get("/api/queues").json() if q["vhost"] == "shop"]
            assert queue["messages"] == 1  # only the new one
            out = _cli(data, "vhosts", "delete", "shop")  # asks the running server
            assert out.returncode == 0, out.stderr
            assert api.get("/api/vhosts/shop").status_code == 404
        server.stop()
        server.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                          auth=("guest", "guest"), timeout=10) as api:
            assert api.put("/api/vhosts/shop").status_code in (201, 204)
            assert api.put("/api/permissions/shop/guest",
                           json={"configure": ".*", "write": ".*", "read": ".*"}).status_code < 300
            assert _contents(api) == (set(), [], [])  # nothing came back from the store
            _fill(api)
    finally:
        server.stop()
    out = _cli(data, "vhosts", "delete", "shop")  # no server: the same, on the directory
    assert out.returncode == 0, out.stderr
    assert "shop" not in _cli(data, "vhosts", "list").stdout
    assert _cli(data, "vhosts", "add", "shop").returncode == 0
    listed = _cli(data, "queues")
    assert listed.returncode == 0 and "billing" not in listed.stdout, listed.stdout
