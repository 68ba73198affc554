"""The OpenAPI 3.0 document of the gateway, served at ``/openapi.json``.

Written out here (not generated from the handlers) so that it says what the API promises; the
test suite fuzzes every operation in it with schemathesis and asserts no 5xx.
"""

from __future__ import annotations

from typing import Any

import tidings

ERROR = {"$ref": "#/components/schemas/Error"}
ANY_JSON: dict[str, Any] = {}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any] | None = None,
        code: str = "200") -> dict[str, Any]:
    responses: dict[str, Any] = {
        code: {"description": description, **(_json(schema) if schema is not None else {})},
        "400": {"description": "bad request", **_json(ERROR)},
        "401": {"description": "no or bad credentials", **_json(ERROR)},
        "403": {"description": "not permitted", **_json(ERROR)},
        "404": {"description": "not found", **_json(ERROR)},
        "409": {"description": "conflicts with the broker's state", **_json(ERROR)},
    }
    return responses


def _path(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in names]


MESSAGE_IN = {
    "type": "object",
    "properties": {
        "body": {"type": "string"}, "json": ANY_JSON, "body_base64": {"type": "string"},
        "headers": {"type": "object"}, "priority": {"type": "integer", "minimum": 0,
                                                    "maximum": 255},
        "ttl_ms": {"type": "integer", "minimum": 0}, "delay_ms": {"type": "integer",
                                                                  "minimum": 0},
        "message_id": {"type": "string"}, "content_type": {"type": "string"},
        "persistent": {"type": "boolean"}, "correlation_id": {"type": "string"},
        "reply_to": {"type": "string"},
    },
}
RECEIVE = {"type": "object", "properties": {
    "max": {"type": "integer", "minimum": 1, "maximum": 1000},
    "visibility_ms": {"type": "integer", "minimum": 1},
    "wait_ms": {"type": "integer", "minimum": 0, "maximum": 30000}}}
QUEUE_IN = {"type": "object", "properties": {
    "durable": {"type": "boolean"}, "auto_delete": {"type": "boolean"},
    "arguments": {"type": "object"}}}
EXCHANGE_IN = {"type": "object", "properties": {
    "type": {"type": "string", "enum": ["direct", "fanout", "topic", "headers"]},
    "durable": {"type": "boolean"}, "auto_delete": {"type": "boolean"},
    "internal": {"type": "boolean"}, "arguments": {"type": "object"}}}
BINDING = {"type": "object", "required": ["source", "destination"], "properties": {
    "source": {"type": "string"}, "destination": {"type": "string"},
    "destination_type": {"type": "string", "enum": ["queue", "exchange"]},
    "routing_key": {"type": "string"}, "arguments": {"type": "object"}}}
EVENT = {"type": "object", "required": ["type", "data"],
         "properties": {"type": {"type": "string"}, "data": ANY_JSON}}


def _service_paths() -> dict[str, Any]:
    """Health, numbers, metrics, vhosts, quarantine and definitions."""
    return {
        "/healthz": {"get": {"summary": "Liveness (no credentials needed)",
                             "responses": {"200": {"description": "ok"}}, "security": []}},
        "/api/overview": {"get": {"summary": "Broker-wide numbers", "responses": _ok("ok",
                                                                                   ANY_JSON)}},
        "/api/connections": {"get": {"summary": "Open AMQP connections",
                                     "responses": _ok("ok", {"type": "array"})}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition format"}}}},
        "/api/vhosts": {"get": {"summary": "List vhosts with their message totals",
                                "responses": _ok("ok", {"type": "array"})}},
        "/api/quarantine": {"get": {"summary": "Records that could not be read (administrator)",
                                    "responses": _ok("ok", {"type": "array"})}},
        "/api/tidings/keys": {"get": {
            "summary": "What the data directory is encrypted under (administrator)",
            "responses": _ok("ok", ANY_JSON)}},
        "/api/tidings/keys/rotate": {"post": {
            "summary": "Rotate the master key while serving: data keys rewrapped by the key "
                       "file's first key (administrator)",
            "responses": _ok("rotated", ANY_JSON)}},
        "/api/definitions": {
            "get": {"summary": "Export durable definitions (RabbitMQ's format)",
                    "responses": _ok("ok")},
            "post": {"summary": "Import definitions (administrator)",
                     "requestBody": _json({"type": "object"}), "responses": _ok("imported")}},
    }


def _event_paths() -> dict[str, Any]:
    """Events in (POST) and out (server-sent events)."""
    return {
        "/events/{topic}": {"post": {
            "summary": "Publish an event (any body; JSON checked when declared JSON)",
            "parameters": [*_path("topic"), {"name": "Idempotency-Key", "in": "header",
                                             "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": ANY_JSON},
                                        "text/plain": {"schema": {"type": "string"}}}},
            "responses": _ok("accepted, durable", {"type": "object"}, "202")}},
        "/event": {"post": {"summary": "Publish {type, data} as an event of topic `type`",
                            "requestBody": {"required": True, **_json(EVENT)},
                            "responses": _ok("accepted, durable", {"type": "object"}, "202")}},
        "/events/stream": {"get": {
            "summary": "Server-sent events whose topic matches `topic` (a pattern)",
            "parameters": [{"name": "topic", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "text/event-stream"},
                          "400": {"description": "bad pattern", **_json(ERROR)}}}},
    }


def _queue_paths() -> dict[str, Any]:
    """Queues over REST: declare, inspect, send, receive with a lease, dead letters."""
    q = "/api/queues/{vhost}/{name}"
    qp = _path("vhost", "name")
    return {
        "/api/queues": {"get": {"summary": "List queues", "parameters": [
            {"name": "vhost", "in": "query", "schema": {"type": "string"}}],
            "responses": _ok("ok", {"type": "array"})}},
        "/api/queues/{vhost}": {"get": {"summary": "List the queues of one vhost",
                                        "parameters": qp[:1],
                                        "responses": _ok("ok", {"type": "array"})}},
        q: {
            "get": {"summary": "Inspect a queue", "parameters": qp, "responses": _ok("ok")},
            "put": {"summary": "Declare a queue", "parameters": qp,
                    "requestBody": _json(QUEUE_IN), "responses": _ok("exists", None)},
            "delete": {"summary": "Delete a queue", "parameters": [
                *qp, {"name": "if_unused", "in": "query", "schema": {"type": "boolean"}},
                {"name": "if_empty", "in": "query", "schema": {"type": "boolean"}}],
                "responses": _ok("deleted")},
        },
        f"{q}/contents": {"delete": {"summary": "Purge ready messages", "parameters": qp,
                                     "responses": _ok("purged")}},
        f"{q}/messages": {"post": {"summary": "Send a message (201 once durable)",
                                   "parameters": qp,
                                   "requestBody": {"required": True, **_json(MESSAGE_IN)},
                                   "responses": _ok("sent", None, "201")}},
        f"{q}/receive": {"post": {"summary": "Receive messages with a lease",
                                  "parameters": qp, "requestBody": _json(RECEIVE),
                                  "responses": _ok("messages (possibly none)")}},
        f"{q}/dead-letters": {
            "get": {"summary": "List dead letters", "parameters": [
                *qp, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": _ok("dead letters")},
            "delete": {"summary": "Purge dead letters", "parameters": qp,
                       "responses": _ok("purged")}},
        f"{q}/dead-letters/replay": {"post": {
            "summary": "Move dead letters (all or by id) back into the queue",
            "parameters": qp, "requestBody": _json({"type": "object", "properties": {
                "ids": {"type": "array", "items": {"type": "string"}}}}),
            "responses": _ok("replayed")}},
    }


def _stream_paths() -> dict[str, Any]:
    """Streams and their readers."""
    qp = _path("vhost", "name")
    return {
        "/api/streams": {"get": {"summary": "List streams: records, bytes, offsets, "
                                            "retention and each reader's lag",
                                 "responses": _ok("ok", {"type": "array"})}},
        "/api/streams/{vhost}/{name}": {"get": {"summary": "Inspect a stream",
                                                "parameters": qp, "responses": _ok("ok")}},
    }


def _lease_paths() -> dict[str, Any]:
    """Settling a message received with a lease."""
    return {
        "/api/receipts/{receipt}/ack": {"post": {"summary": "Acknowledge a leased message",
                                                  "parameters": _path("receipt"),
                                                  "responses": _ok("acked")}},
        "/api/receipts/{receipt}/nack": {"post": {
            "summary": "Return a leased message (requeue, optional delay) or dead-letter it",
            "parameters": _path("receipt"), "requestBody": _json({"type": "object", "properties": {
                "requeue": {"type": "boolean"}, "delay_ms": {"type": "integer", "minimum": 1}}}),
            "responses": _ok("nacked")}},
        "/api/receipts/{receipt}/extend": {"post": {
            "summary": "Extend a lease", "parameters": _path("receipt"),
            "requestBody": _json({"type": "object", "properties": {
                "visibility_ms": {"type": "integer", "minimum": 1}}}),
            "responses": _ok("extended")}},
    }


def _topology_paths() -> dict[str, Any]:
    """Exchanges and bindings."""
    qp = _path("vhost", "name")
    return {
        "/api/exchanges": {"get": {"summary": "List exchanges",
                                   "responses": _ok("ok", {"type": "array"})}},
        "/api/exchanges/{vhost}/{name}": {
            "put": {"summary": "Declare an exchange", "parameters": qp,
                    "requestBody": _json(EXCHANGE_IN), "responses": _ok("declared", None,
                                                                         "201")},
            "delete": {"summary": "Delete an exchange", "parameters": qp,
                       "responses": _ok("deleted")}},
        "/api/bindings": {"get": {"summary": "List bindings",
                                  "responses": _ok("ok", {"type": "array"})}},
        "/api/bindings/{vhost}": {
            "post": {"summary": "Bind", "parameters": _path("vhost"),
                     "requestBody": {"required": True, **_json(BINDING)},
                     "responses": _ok("bound", None, "201")},
            "delete": {"summary": "Unbind", "parameters": _path("vhost"),
                       "requestBody": {"required": True, **_json(BINDING)},
                       "responses": _ok("unbound")}},
    }


def _rabbitmq_paths() -> dict[str, Any]:
    """RabbitMQ management API operations (rabbitmqadmin's), with RabbitMQ's bodies."""
    qp = _path("vhost", "name")
    ends = _path("vhost", "source", "kind", "destination")
    body = {"required": True, **_json({"type": "object"})}
    between = "/api/bindings/{vhost}/e/{source}/{kind}/{destination}"
    return {
        "/api/exchanges/{vhost}/{name}/publish": {"post": {
            "summary": "Publish one message (RabbitMQ's body: routing_key, payload, "
                       "payload_encoding, properties); durable when answered",
            "parameters": qp, "requestBody": body, "responses": _ok("routed or not")}},
        "/api/queues/{vhost}/{name}/get": {"post": {
            "summary": "Get up to count messages, then ack or requeue / reject them (ackmode)",
            "parameters": qp, "requestBody": body,
            "responses": _ok("messages", {"type": "array"})}},
        between: {
            "get": {"summary": "Bindings from an exchange to a queue (q) or exchange (e)",
                    "parameters": ends, "responses": _ok("ok", {"type": "array"})},
            "post": {"summary": "Bind (routing_key, arguments); Location: its properties key",
                     "parameters": ends, "requestBody": body,
                     "responses": _ok("bound", None, "201")}},
        between + "/{props}": {"delete": {
            "summary": "Unbind the binding of that properties key",
            "parameters": [*ends, *_path("props")], "responses": _ok("unbound", None, "204")}},
    }


def _access_paths() -> dict[str, Any]:
    """Users, permissions, vhosts and the node, as RabbitMQ's management API has them."""
    body = {"required": True, **_json({"type": "object"})}

    def crud(what: str, *names: str) -> dict[str, Any]:
        params = _path(*names)
        return {"get": {"summary": f"One {what}", "parameters": params,
                        "responses": _ok("ok", {"type": "object"})},
                "put": {"summary": f"Create or change a {what} (administrator)",
                        "parameters": params, "requestBody": body,
                        "responses": _ok("created", None, "201")},
                "delete": {"summary": f"Delete a {what} (administrator)",
                           "parameters": params, "responses": _ok("deleted", None, "204")}}

    def listing(summary: str, *names: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "parameters": _path(*names),
                        "responses": _ok("ok", {"type": "array"})}}

    return {
        "/api/whoami": {"get": {"summary": "The user asking, with its tags",
                                "responses": _ok("ok", {"type": "object"})}},
        "/api/users": listing("Users and their tags (administrator; never passwords)"),
        "/api/users/{user}": crud("user ({password, tags})", "user"),
        "/api/users/{user}/permissions": listing("One user's permissions", "user"),
        "/api/permissions": listing("Every user's permissions per vhost (administrator)"),
        "/api/permissions/{vhost}/{user}": crud("permission ({configure, write, read})",
                                                "vhost", "user"),
        "/api/vhosts/{vhost}": crud("vhost", "vhost"),
        "/api/nodes": listing("This node"),
        "/api/nodes/{node}": {"get": {"summary": "This node by name", "parameters":
                                      _path("node"), "responses": _ok("ok")}},
        "/api/connections/{name}": {
            "get": {"summary": "One AMQP connection (named 'peer -> local')",
                    "parameters": _path("name"), "responses": _ok("ok")},
            "delete": {"summary": "Close it (320 CONNECTION_FORCED; X-Reason says why)",
                       "parameters": _path("name"), "responses": _ok("closed", None, "204")}},
        "/api/channels": listing("Open AMQP channels"),
        "/api/consumers": listing("AMQP consumers"),
        "/api/consumers/{vhost}": listing("AMQP consumers of one vhost", "vhost"),
        "/api/healthchecks/node": {"get": {"summary": "Is the node up",
                                           "responses": _ok("ok")}},
        "/api/aliveness-test/{vhost}": {"get": {
            "summary": "A message through the vhost's aliveness-test queue",
            "parameters": _path("vhost"), "responses": _ok("ok")}},
        "/api/parameters": listing("Runtime parameters (tidings has none)"),
        "/api/machines": listing("State machines with instances, counts per state"),
        "/api/machine-diagrams/{vhost}/{name}": {"get": {
            "summary": "The machine's picture (SVG) with each state's instances now",
            "parameters": _path("vhost", "name"), "responses": _ok("ok")}},
        "/api/machines/{vhost}/{name}": {"get": {
            "summary": "Counts per state and a page of instances (?state=&page=&page_size=)",
            "parameters": _path("vhost", "name"), "responses": _ok("ok", {"type": "object"})}},
        "/api/machines/{vhost}/{name}/{key}": {"get": {
            "summary": "One instance: state, data, version, history, timers, audit",
            "parameters": _path("vhost", "name", "key"),
            "responses": _ok("ok", {"type": "object"})}},
        "/api/machines/{vhost}/{name}/{key}/move": {"post": {
            "summary": "Move a stuck instance ({state, reason}), recorded in its audit",
            "parameters": _path("vhost", "name", "key"),
            "requestBody": {"required": True, **_json({"type": "object"})},
            "responses": _ok("moved", {"type": "object"})}},
        "/api/history": {"get": {"summary": "The node's numbers of the last 15 minutes, "
                                            "every 5 s (administrator, monitoring)",
                                 "responses": _ok("ok", {"type": "object"})}},
        "/api/history/queues/{vhost}/{name}": {"get": {
            "summary": "One queue's depth, rates, waiting and processing time (p50, p99 per "
                       "interval) of the last 15 minutes",
            "parameters": _path("vhost", "name"), "responses": _ok("ok", {"type": "object"})}},

        "/api/global-parameters": listing("Global parameters (cluster_name)"),
        **_policy_paths("/api/policies", "policy"),
        **_policy_paths("/api/operator-policies", "operator policy"),
    }


def _policy_paths(base: str, what: str) -> dict[str, Any]:
    """Policies as RabbitMQ's (policymaker or administrator)."""
    body = {"required": True, **_json({"type": "object", "required": ["pattern",
                                                                      "definition"]})}
    params = _path("vhost", "name")
    return {
        base: {"get": {"summary": f"Every {what} of the vhosts the caller may see",
                       "responses": _ok("ok", {"type": "array"})}},
        f"{base}/{{vhost}}": {"get": {"summary": f"The {what} list of one vhost",
                                      "parameters": _path("vhost"),
                                      "responses": _ok("ok", {"type": "array"})}},
        f"{base}/{{vhost}}/{{name}}": {
            "get": {"summary": f"One {what}", "parameters": params,
                    "responses": _ok("ok", {"type": "object"})},
            "put": {"summary": f"Create or change a {what} ({{pattern, definition, priority, "
                               f"apply-to}}); keys without effect come back as warnings",
                    "parameters": params, "requestBody": body,
                    "responses": {**_ok("created", None, "201"),
                                  "200": {"description": "changed, with warnings",
                                          **_json({"type": "object"})},
                                  "204": {"description": "changed"}}},
            "delete": {"summary": f"Delete a {what}", "parameters": params,
                       "responses": _ok("deleted", None, "204")}},
    }


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {**_service_paths(), **_event_paths(), **_queue_paths(),
                             **_stream_paths(), **_lease_paths(), **_topology_paths(),
                             **_rabbitmq_paths(), **_access_paths()}
    paths["/api/queues/{vhost}/{name}/messages"]["get"] = {
        "summary": "The first ready messages (?limit=10), left in place, with properties",
        "parameters": _path("vhost", "name"), "responses": _ok("ok", {"type": "array"})}
    paths["/api/exchanges/{vhost}/{name}"]["get"] = {
        "summary": "One exchange", "parameters": _path("vhost", "name"),
        "responses": _ok("ok", {"type": "object"})}
    return {
        "openapi": "3.0.3",
        "info": {"title": "tidings HTTP gateway", "version": tidings.__version__,
                 "description": "Events in and out, queues over REST, metrics. Every error "
                                "is {\"error\": code, \"message\": text}. A vhost in a path "
                                "is URL-encoded: %2F for /."},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error", "message", "reason"],
                                  "properties": {"error": {"type": "string"},
                                                 "message": {"type": "string"},
                                                 "reason": {"type": "string"}}}},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"basic": []}, {"bearer": []}],
    }
