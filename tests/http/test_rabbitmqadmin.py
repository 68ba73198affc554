"""RabbitMQ's own command-line tool, rabbitmqadmin, unchanged against ``tidings serve``'s
management API: declare a queue, an exchange and a binding, publish, get, list, delete a
binding by its properties key, purge and delete; and the API's RabbitMQ conventions it relies
on (booleans and numbers as strings, errors with a ``reason``, one exchange by name)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import httpx
import pika
import pytest

from ..serverproc import ServerProcess

ADMIN = shutil.which("rabbitmqadmin")


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    assert ADMIN is not None
    return subprocess.run([ADMIN, "-H", "127.0.0.1", "-P", str(server.http_port), "-u", "guest",
                           "-p", "guest", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(ADMIN is None, reason="rabbitmqadmin is not installed (it comes with "
                                          "RabbitMQ's management plugin)")
def test_rabbitmqadmin_operates_tidings(server: ServerProcess) -> None:
    q, x = f"adm-{uuid.uuid4().hex[:8]}", f"admx-{uuid.uuid4().hex[:8]}"
    for args, said in [
        (("declare", "queue", f"name={q}", "durable=true"), "queue declared"),
        (("declare", "exchange", f"name={x}", "type=direct"), "exchange declared"),
        (("declare", "binding", f"source={x}", f"destination={q}", "routing_key=k"),
         "binding declared"),
        (("publish", f"exchange={x}", "routing_key=k", "payload=via the exchange"),
         "Message published"),
        (("publish", "exchange=amq.default", f"routing_key={q}", "payload=direct"),
         "Message published"),
    ]:
        done = admin(server, *args)
        assert done.returncode == 0 and said in done.stdout, (args, done.stdout, done.stderr)
    bindings = json.loads(admin(server, "-f", "raw_json", "list", "bindings").stdout)
    assert {"source": x, "destination": q, "routing_key": "k"}.items() <= \
        next(b for b in bindings if b["source"] == x).items()
    peeked = json.loads(admin(server, "-f", "raw_json", "get", f"queue={q}",
                              "ackmode=ack_requeue_true", "count=5").stdout)
    assert [m["payload"] for m in peeked] == ["via the exchange", "direct"]
    assert [m["routing_key"] for m in peeked] == ["k", q]
    taken = json.loads(admin(server, "-f", "raw_json", "get", f"queue={q}",
                             "ackmode=ack_requeue_false", "count=1").stdout)
    assert taken[0]["payload"] == "via the exchange" and taken[0]["redelivered"] is True
    assert taken[0]["message_count"] == 1
    done = admin(server, "delete", "binding", f"source={x}", f"destination={q}",
                 "destination_type=queue", "properties_key=k")
    assert done.returncode == 0, done.stderr
    assert admin(server, "publish", f"exchange={x}", "routing_key=k",
                 "payload=x").stdout.strip() == "Message published but NOT routed"
    assert admin(server, "purge", "queue", f"name={q}").returncode == 0
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    assert admin(server, "delete", "queue", f"name={q}").returncode == 0
    missing = admin(server, "delete", "queue", f"name={q}")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_the_management_api_takes_rabbitmqs_conventions(http: httpx.Client) -> None:
    q = f"conv-{uuid.uuid4().hex[:8]}"
    made = http.put(f"/api/queues/%2F/{q}", json={"durable": "true", "auto_delete": "false"})
    assert made.status_code == 201, made.text
    wrong = http.put(f"/api/queues/%2F/{q}-2", json={"durable": "yes"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "bad_request" and "durable" in wrong.json()["reason"]
    assert http.get("/api/exchanges/%2F/amq.direct").json()["type"] == "direct"
    assert http.get("/api/exchanges/%2F/amq.default").json()["name"] == "amq.default"
    assert http.get("/api/exchanges/%2F/no-such").status_code == 404
    sent = http.post("/api/exchanges/%2F/amq.default/publish", json={
        "routing_key": q, "payload": "aGk=", "payload_encoding": "base64",
        "properties": {"delivery_mode": 2, "headers": {"h": "v"}, "message_id": "m1"}})
    assert sent.json() == {"routed": True}
    assert http.post("/api/exchanges/%2F/amq.default/publish", json={
        "routing_key": q, "payload": "x", "properties": []}).status_code == 400
    got = http.post(f"/api/queues/%2F/{q}/get", json={"count": "2", "ackmode":
                                                      "reject_requeue_false",
                                                      "encoding": "auto"}).json()
    assert [(m["payload"], m["properties"]["message_id"], m["properties"]["headers"])
            for m in got] == [("hi", "m1", {"h": "v"})]
    assert http.post(f"/api/queues/%2F/{q}/get", json={"count": 1, "ackmode": "maybe"}) \
        .status_code == 400


@pytest.mark.skipif(ADMIN is None, reason="rabbitmqadmin is not installed (it comes with "
                                          "RabbitMQ's management plugin)")
def test_rabbitmqadmin_manages_users_permissions_and_vhosts(server: ServerProcess) -> None:
    vhost, user = f"v-{uuid.uuid4().hex[:6]}", f"u-{uuid.uuid4().hex[:6]}"
    for args in [("declare", "vhost", f"name={vhost}"),
                 ("declare", "user", f"name={user}", "password=s3cret", "tags=monitoring"),
                 ("declare", "permission", f"vhost={vhost}", f"user={user}", "configure=.*",
                  "write=.*", "read=^own-.*")]:
        done = admin(server, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    listed = json.loads(admin(server, "-f", "raw_json", "list", "permissions").stdout)
    assert {"user": user, "vhost": vhost, "configure": ".*", "write": ".*",
            "read": "^own-.*"} in listed
    users = json.loads(admin(server, "-f", "raw_json", "list", "users").stdout)
    assert {"name": user, "tags": ["monitoring"]}.items() <= \
        next(u for u in users if u["name"] == user).items()
    assert not any("password" in key for u in users for key in u)  # never listed
    # the new user logs in over AMQP to the new vhost with the new password
    creds = pika.PlainCredentials(user, "s3cret")
    with pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", server.port, virtual_host=vhost, credentials=creds)) as conn:
        conn.channel().queue_declare("own-q")
    nodes = json.loads(admin(server, "-f", "raw_json", "list", "nodes").stdout)
    assert nodes[0]["running"] is True and nodes[0]["mem_used"] > 0
    for args in [("delete", "permission", f"vhost={vhost}", f"user={user}"),
                 ("delete", "user", f"name={user}"), ("delete", "vhost", f"name={vhost}")]:
        assert admin(server, *args).returncode == 0, args
    vhosts = json.loads(admin(server, "-f", "raw_json", "list", "vhosts").stdout)
    assert vhost not in {v["name"] for v in vhosts}
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port,
                                                          credentials=creds))


def test_only_administrators_change_users_and_anyone_asks_who_they_are(
        http: httpx.Client, server: ServerProcess) -> None:
    name = f"m-{uuid.uuid4().hex[:6]}"
    wrong = http.put(f"/api/users/{name}", json={"password": "pw", "tags": "wizard"})
    assert wrong.status_code == 400 and "wizard" in wrong.json()["reason"]
    assert http.get(f"/api/users/{name}").status_code == 404  # a refused PUT made nothing
    assert http.put(f"/api/users/{name}", json={"password": "pw", "tags": "monitoring"}
                    ).status_code == 201
    assert http.put(f"/api/users/{name}", json={"tags": ""}).status_code == 400  # no password
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", auth=(name, "pw"),
                      timeout=10) as mon:
        assert mon.get("/api/whoami").json() == {"name": name, "tags": ["monitoring"],
                                                 "limits": {}}
        refused = mon.put("/api/users/evil", json={"password": "x", "tags": "administrator"})
        assert refused.status_code == 403 and refused.json()["reason"]
        assert mon.get("/api/users").status_code == 403
        assert mon.get("/api/healthchecks/node").json() == {"status": "ok"}
    assert http.get("/api/aliveness-test/%2F").json() == {"status": "ok"}
    assert http.get("/api/vhosts/%2F").json()["name"] == "/"
    assert http.delete(f"/api/users/{name}").status_code == 204
    assert http.get(f"/api/users/{name}").status_code == 404


def test_queue_listings_page_and_filter_as_rabbitmq_for_keda(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(5):
        assert http.put(f"/api/queues/%2F/keda-{tag}-{i}", json={}).status_code == 201
    # what KEDA's RabbitMQ scaler asks with useRegex
    paged = http.get("/api/queues/%2F", params={
        "page": 1, "use_regex": "true", "pagination": "false", "name": f"^keda-{tag}-[0-3]$",
        "page_size": 2}).json()
    assert [q["name"] for q in paged["items"]] == [f"keda-{tag}-0", f"keda-{tag}-1"]
    assert (paged["page"], paged["page_size"], paged["page_count"], paged["filtered_count"],
            paged["item_count"]) == (1, 2, 2, 4, 2)
    assert paged["total_count"] >= 5 and "messages" in paged["items"][0]
    second = http.get("/api/queues", params={"page": "2", "page_size": "2", "use_regex":
                                             "true", "name": f"^keda-{tag}-[0-3]$"}).json()
    assert [q["name"] for q in second["items"]] == [f"keda-{tag}-2", f"keda-{tag}-3"]
    plain = http.get("/api/queues", params={"name": f"keda-{tag}-4"}).json()
    assert [q["name"] for q in plain] == [f"keda-{tag}-4"]  # no page: a list, as before
    bad = http.get("/api/queues", params={"page": 1, "use_regex": "true", "name": "(("})
    assert bad.status_code == 400 and "regular expression" in bad.json()["reason"]
    assert http.get("/api/queues", params={"page": 1, "page_size": 501}).status_code == 400


@pytest.mark.skipif(ADMIN is None, reason="rabbitmqadmin is not installed (it comes with "
                                          "RabbitMQ's management plugin)")
def test_rabbitmqadmin_lists_channels_and_consumers_and_closes_a_connection(
        server: ServerProcess) -> None:
    q = f"watched-{uuid.uuid4().hex[:6]}"
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", server.port, client_properties={"connection_name": "the-worker"}))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=7)
    tag = ch.basic_consume(q, lambda *a: None)

    def listed(kind: str) -> list[dict[str, object]]:
        return list(json.loads(admin(server, "-f", "raw_json", "list", kind).stdout))

    mine = next(c for c in listed("connections")
                if c["client_properties"]["connection_name"] == "the-worker")  # type: ignore[index]
    assert mine["user"] == "guest" and mine["channels"] == 1 and mine["peer_port"]
    channel = next(c for c in listed("channels")
                   if c["connection_details"]["name"] == mine["name"])  # type: ignore[index]
    assert channel["consumer_count"] == 1 and channel["prefetch_count"] == 7
    consumer = next(c for c in listed("consumers") if c["consumer_tag"] == tag)
    assert consumer["queue"] == {"name": q, "vhost": "/"} and consumer["ack_required"]
    done = admin(server, "close", "connection", f"name={mine['name']}")
    assert done.returncode == 0, done.stderr
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=2)
    assert info.value.reply_code == 320
    assert mine["name"] not in {c["name"] for c in listed("connections")}


def test_the_overview_says_who_answers(http: httpx.Client, server: ServerProcess) -> None:
    body = http.get("/api/overview").json()
    assert body["product_name"] == "tidings" and body["rabbitmq_version"].startswith("3.")
    assert body["node"] == body["cluster_name"] and body["node"].startswith("tidings@")
    assert {"direct", "fanout", "topic", "headers"} <= {e["name"]
                                                       for e in body["exchange_types"]}
    assert "queue_totals" in body and "object_totals" in body  # what was there stays
    if ADMIN is not None:
        shown = admin(server, "show", "overview").stdout
        assert "3.10.0" in shown and body["cluster_name"] in shown


@pytest.mark.skipif(ADMIN is None, reason="rabbitmqadmin is not installed (it comes with "
                                          "RabbitMQ's management plugin)")
def test_rabbitmqadmin_declares_a_policy_that_limits_a_live_queue(
        server: ServerProcess, http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    q, name = f"capped-{tag}", f"cap-{tag}"
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        for i in range(5):
            ch.basic_publish("", q, f"m{i}".encode())
        done = admin(server, "declare", "policy", f"name={name}", f"pattern=^capped-{tag}$",
                     'definition={"max-length": 2, "ha-mode": "all"}', "priority=3",
                     "apply-to=queues")
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert ch.queue_declare(q, passive=True).method.message_count == 2
        got = ch.basic_get(q, auto_ack=True)[2]
        assert got == b"m3"  # drop-head: the oldest went
    listed = json.loads(admin(server, "-f", "raw_json", "list", "policies").stdout)
    mine = next(p for p in listed if p["name"] == name)
    assert (mine["pattern"], mine["priority"], mine["apply-to"], mine["definition"]) == \
        (f"^capped-{tag}$", 3, "queues", {"max-length": 2, "ha-mode": "all"})
    assert any("ha-mode" in w and "no effect" in w for w in mine["warnings"])
    queue = http.get(f"/api/queues/%2F/{q}").json()
    assert queue["policy"] == name and queue["effective_policy_definition"] == {"max-length": 2}
    assert admin(server, "delete", "policy", f"name={name}").returncode == 0
    assert http.get(f"/api/queues/%2F/{q}").json()["policy"] is None
    assert http.get(f"/api/policies/%2F/{name}").status_code == 404


def test_policies_over_http_check_their_input_and_who_asks(
        http: httpx.Client, server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    said = http.put(f"/api/policies/%2F/p-{tag}", json={"pattern": "^nothing-yet$",
                                                       "definition": {"ha-mode": "all"}})
    assert said.status_code == 201 and "ha-mode" in said.json()["warnings"][0]
    for bad in [{"pattern": "(", "definition": {"max-length": 1}},
                {"pattern": ".*", "definition": {"max-length": "many"}},
                {"pattern": ".*", "definition": {}}, {"pattern": ".*"}]:
        refused = http.put(f"/api/policies/%2F/bad-{tag}", json=bad)
        assert refused.status_code == 400 and refused.json()["reason"], bad
    op = http.put(f"/api/operator-policies/%2F/op-{tag}", json={
        "pattern": ".*", "definition": {"dead-letter-exchange": "x"}})
    assert op.status_code == 400 and "operator policy" in op.json()["reason"]
    assert http.put(f"/api/operator-policies/%2F/op-{tag}", json={
        "pattern": "^nothing-yet$", "definition": {"max-length": 10}}).status_code == 201
    assert [p["name"] for p in http.get("/api/operator-policies/%2F").json()] == [f"op-{tag}"]
    name = f"mon-{tag}"
    assert http.put(f"/api/users/{name}", json={"password": "pw", "tags": "monitoring"}
                    ).status_code == 201
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", auth=(name, "pw"),
                      timeout=10) as mon:
        assert mon.get("/api/policies").status_code == 403
        assert mon.put(f"/api/policies/%2F/x-{tag}", json={
            "pattern": ".*", "definition": {"max-length": 0}}).status_code == 403
    for path in (f"/api/policies/%2F/p-{tag}", f"/api/operator-policies/%2F/op-{tag}",
                 f"/api/users/{name}"):
        assert http.delete(path).status_code == 204


def test_listings_carry_more_of_rabbitmqs_fields(http: httpx.Client, server: ServerProcess
                                                 ) -> None:
    q = f"fields-{uuid.uuid4().hex[:6]}"
    assert http.put(f"/api/queues/%2F/{q}", json={}).status_code == 201
    queue = http.get(f"/api/queues/%2F/{q}").json()
    assert queue["node"].startswith("tidings@")
    assert queue["messages_ready_details"] == {"rate": 0.0}
    vhost = http.get("/api/vhosts/%2F").json()
    assert vhost["default_queue_type"] == "classic" and "message_stats" in vhost
    assert list(vhost["cluster_state"].values()) == ["running"]
    with pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", server.port, client_properties={"connection_name": "named"})):
        [conn] = [c for c in http.get("/api/connections").json()
                  if c["user_provided_name"] == "named"]
    assert conn["port"] == server.port and conn["ssl"] is False and conn["channel_max"] > 0
