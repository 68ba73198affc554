"""Definitions as RabbitMQ writes them: a RabbitMQ 3.10 export (users with RabbitMQ's salted
SHA-256 hashes, permissions, policies, a server-named queue, parameters) imports whole, with
what it skips said; a document with one bad entry changes nothing; an export carries users,
permissions and policies into another tidings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pika
import pytest

from ..serverproc import ServerProcess, running

EXPORT = Path(__file__).parent / "fixtures" / "rabbitmq-3.10-definitions.json"


def _client(server: ServerProcess, user: str = "guest", password: str = "guest"
            ) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", auth=(user, password),
                        timeout=10)


@pytest.fixture
def fresh(tmp_path: Path) -> ServerProcess:
    with running(tmp_path / "data") as proc:
        yield proc  # type: ignore[misc]


def test_a_rabbitmq_export_imports_whole_and_says_what_it_skipped(
        fresh: ServerProcess) -> None:
    with _client(fresh) as http:
        done = http.post("/api/definitions", json=json.loads(EXPORT.read_text()))
        assert done.status_code == 200, done.text
        report = done.json()
        assert report["imported"] == {"users": 2, "vhosts": 2, "permissions": 2,
                                      "policies": 1, "operator_policies": 0, "exchanges": 2,
                                      "queues": 3, "bindings": 2}
        skipped = "\n".join(report["skipped"])
        assert "amq.gen-3y6Ke1RzHjyvE8xUyKHJbA" in skipped and "server-named" in skipped
        assert "topic_permissions" in skipped and "parameters" in skipped
        assert http.put("/api/permissions/shop/guest", json={
            "configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
        queue = http.get("/api/queues/shop/orders.created").json()
        assert queue["policy"] == "orders-cap"
        assert queue["effective_policy_definition"] == {"max-length": 100,
                                                        "overflow": "reject-publish"}
        assert http.get("/api/queues/shop/events").json()["type"] == "stream"
        [policy] = http.get("/api/policies/shop").json()
        assert any("ha-mode" in w for w in policy["warnings"])
    # the imported user logs in with the password RabbitMQ hashed, over AMQP and HTTP
    creds = pika.PlainCredentials("app", "app-secret")
    with pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", fresh.port, virtual_host="shop", credentials=creds)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("orders", "order.created", b"one")
        assert ch.queue_declare("orders.created", passive=True).method.message_count == 1
    with _client(fresh, "ops", "ops-secret") as ops:
        assert ops.get("/api/whoami").json()["tags"] == ["administrator"]
    with _client(fresh, "ops", "wrong") as bad:
        assert bad.get("/api/whoami").status_code == 401
    # after a good login the user carries tidings' own hash (and SCRAM keys for Kafka)
    with _client(fresh) as http:
        users = {u["name"]: u for u in http.get("/api/definitions").json()["users"]}
    assert users["app"]["hashing_algorithm"] == "tidings_pbkdf2_sha256"
    assert "scram" in json.loads((fresh.data_dir / "users.json").read_text())["users"]["app"]


def test_a_document_with_one_bad_entry_changes_nothing(fresh: ServerProcess) -> None:
    doc = json.loads(EXPORT.read_text())
    doc["queues"].append({"name": "last", "vhost": "/", "durable": True,
                          "arguments": {"x-max-length": "lots"}})
    with _client(fresh) as http:
        refused = http.post("/api/definitions", json=doc)
        assert refused.status_code == 400
        assert "queues[4]" in refused.json()["reason"]
        assert http.get("/api/queues/%2F/jobs").status_code == 404  # not half applied
        assert "shop" not in {v["name"] for v in http.get("/api/vhosts").json()}
        assert "app" not in {u["name"] for u in http.get("/api/users").json()}
        assert http.get("/api/policies").json() == []
        for bad, named in [
            ({"users": [{"name": "x", "password_hash": "abc",
                         "hashing_algorithm": "rabbit_password_hashing_bcrypt"}]}, "users[0]"),
            ({"bindings": [{"source": "nowhere", "destination": "q"}]}, "bindings[0]"),
            ({"policies": [{"name": "p", "pattern": "(", "definition": {"max-length": 1}}]},
             "policies[0]"),
            ({"permissions": [{"user": "ghost", "vhost": "/", "configure": "", "write": "",
                               "read": ""}]}, "ghost"),
        ]:
            answer = http.post("/api/definitions", json=bad)
            assert answer.status_code == 400 and named in answer.json()["reason"], answer.text


def test_an_export_carries_users_permissions_and_policies_to_another_tidings(
        fresh: ServerProcess, tmp_path: Path) -> None:
    with _client(fresh) as http:
        assert http.post("/api/definitions",
                         json=json.loads(EXPORT.read_text())).status_code == 200
        assert http.put("/api/users/native", json={"password": "n-pw", "tags": "monitoring"}
                        ).status_code == 201
        assert http.put("/api/permissions/shop/guest", json={
            "configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
        exported = http.get("/api/definitions").json()
    users = {u["name"]: u for u in exported["users"]}
    assert users["app"]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert users["native"]["hashing_algorithm"] == "tidings_pbkdf2_sha256"
    assert {"user": "app", "vhost": "shop", "configure": "^orders", "write": ".*",
            "read": ".*"} in exported["permissions"]
    assert [p["name"] for p in exported["policies"]] == ["orders-cap"]
    with running(tmp_path / "other") as other, _client(other) as http:
        assert http.post("/api/definitions", json=exported).status_code == 200
        with _client(other, "native", "n-pw") as native:
            assert native.get("/api/whoami").json()["tags"] == ["monitoring"]
        assert http.get("/api/queues/shop/orders.created").json()["policy"] == "orders-cap"


@pytest.mark.skipif(shutil.which("rabbitmqadmin") is None,
                    reason="rabbitmqadmin is not installed (it comes with RabbitMQ's "
                           "management plugin)")
def test_rabbitmqadmin_imports_and_exports_a_rabbitmq_export(
        fresh: ServerProcess, tmp_path: Path) -> None:
    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqadmin", "-H", "127.0.0.1", "-P", str(fresh.http_port),
                               "-u", "guest", "-p", "guest", *args], capture_output=True,
                              text=True, timeout=30)

    done = admin("import", str(EXPORT))
    assert done.returncode == 0 and "Uploaded definitions" in done.stdout, done.stderr
    listed = json.loads(admin("-f", "raw_json", "list", "policies").stdout)
    assert [p["name"] for p in listed] == ["orders-cap"]
    assert {"app", "ops"} <= {u["name"] for u in
                             json.loads(admin("-f", "raw_json", "list", "users").stdout)}
    out = tmp_path / "out.json"
    assert admin("export", str(out)).returncode == 0
    assert {u["name"] for u in json.loads(out.read_text())["users"]} >= {"app", "ops", "guest"}
