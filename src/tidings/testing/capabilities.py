"""The capability table of the docs, printed from the transports' own declarations.

``python -m tidings.testing`` prints it; ``docs/workers.md`` holds the same text between two
markers and a test compares them, so the table cannot drift from what the code declares (and
what the conformance suite skips by).
"""

from __future__ import annotations

import dataclasses

from tidings.client.amqp import amqp_capabilities
from tidings.client.kafka import kafka_capabilities
from tidings.client.local import local_capabilities
from tidings.client.nats import nats_capabilities
from tidings.client.redis import redis_capabilities
from tidings.client.transport import Capabilities

#: What each capability lets a user do, in the table's first column.
ROWS = (
    ("durable", "a confirmed send survives a crash of the broker"),
    ("delays", "`send(delay_ms=...)`, `nack(delay_ms=...)`, retries with backoff"),
    ("priorities", "priorities"),
    ("browse", "browse a queue (`dead_letters()` works everywhere)"),
    ("delete", "`delete(queue, id)` of a ready message"),
    ("delete_delayed", "`delete(queue, id)` of a delayed message"),
    ("extend", "`message.extend()` a lease"),
    ("latency_statistics", "waiting / processing times in `statistics()`"),
    ("streams", "streams: `stream`, `append`, `read`, named readers"),
    ("machines", "state machines: `client.machine(...)`, a transition committed with its event"),
)

BEGIN, END = "<!-- capability table: begin -->", "<!-- capability table: end -->"


def columns() -> list[tuple[str, Capabilities]]:
    return [
        ("`./data`", local_capabilities(durable=True)),
        ("`memory://`", local_capabilities(durable=False)),
        ("`amqp://` tidings serve",
         amqp_capabilities("tidings serve", tidings=True, management=False, machines=True)),
        ("... with `management_url=`",
         amqp_capabilities("tidings serve", tidings=True, management=True, machines=True)),
        ("`amqp://` RabbitMQ", amqp_capabilities("RabbitMQ", tidings=False, management=False)),
        ("`nats://` JetStream", nats_capabilities()),
        ("`redis://` AOF always", redis_capabilities(durable=True)),
        ("`redis://` other", redis_capabilities()),
        ("`kafka://`", kafka_capabilities()),
    ]


def capability_table() -> str:
    cols = columns()
    names = {f.name for f in dataclasses.fields(Capabilities)}
    assert {name for name, _ in ROWS} <= names
    lines = ["| | " + " | ".join(title for title, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, what in ROWS:
        cells = ["yes" if getattr(c, name) else f"no: {c.reason(name)}" for _, c in cols]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join([BEGIN, *lines, END])
