"""One consumer-group member for the group tests, run as its own process so a test can kill
it: ``python member.py LIBRARY BOOTSTRAP TOPIC GROUP STRATEGY SESSION_MS [INSTANCE_ID]``.

It prints one JSON line per event, flushed at once: ``{"assigned": [partitions]}`` (its whole
assignment after each change), ``{"revoked": [partitions]}`` and ``{"record": [partition,
offset, value]}``. SIGTERM closes the consumer properly (it leaves the group); SIGKILL does
not. Offsets are committed automatically every 200 ms.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from typing import Any

stopping = False


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def stop(*_: Any) -> None:
    global stopping
    stopping = True


def confluent(bootstrap: str, topic: str, group: str, strategy: str, session_ms: int,
              instance: str | None) -> None:
    from confluent_kafka import Consumer

    config = {"bootstrap.servers": bootstrap, "group.id": group,
              "auto.offset.reset": "earliest", "session.timeout.ms": session_ms,
              "heartbeat.interval.ms": 500, "auto.commit.interval.ms": 200,
              "partition.assignment.strategy": strategy, "client.id": "member-confluent"}
    if instance:
        config["group.instance.id"] = instance
    consumer = Consumer(config)
    owned: set[int] = set()

    def assigned(c: Any, partitions: Any) -> None:
        owned.update(p.partition for p in partitions)
        say(assigned=sorted(owned))

    def revoked(c: Any, partitions: Any) -> None:
        gone = {p.partition for p in partitions}
        owned.difference_update(gone)
        say(revoked=sorted(gone))

    consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
    while not stopping:
        m = consumer.poll(0.2)
        if m is None or m.error():
            continue
        say(record=[m.partition(), m.offset(), m.value().decode()])
    consumer.close()


def _options(package: str, group: str, strategy: str, session_ms: int) -> dict[str, Any]:
    """The consumer settings kafka-python and aiokafka share (their assignors live at the
    same place in both packages)."""
    module = importlib.import_module(f"{package}.coordinator.assignors.{strategy}")
    assignor = getattr(module, {"range": "RangePartitionAssignor",
                                "roundrobin": "RoundRobinPartitionAssignor"}[strategy])
    return {"group_id": group, "auto_offset_reset": "earliest",
            "session_timeout_ms": session_ms, "heartbeat_interval_ms": 500,
            "auto_commit_interval_ms": 200, "partition_assignment_strategy": [assignor],
            "client_id": f"member-{package}"}


def kafka_python(bootstrap: str, topic: str, group: str, strategy: str, session_ms: int,
                 instance: str | None) -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap,
                             **_options("kafka", group, strategy, session_ms))

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            say(revoked=sorted(p.partition for p in revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            say(assigned=sorted(p.partition for p in assigned))

    consumer.subscribe([topic], listener=Listener())
    while not stopping:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                say(record=[r.partition, r.offset, r.value.decode()])
    consumer.close()


async def aiokafka(bootstrap: str, topic: str, group: str, strategy: str, session_ms: int,
                   instance: str | None) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                **_options("aiokafka", group, strategy, session_ms))

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            say(revoked=sorted(p.partition for p in revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            say(assigned=sorted(p.partition for p in assigned))

    await consumer.start()
    consumer.subscribe([topic], listener=Listener())
    while not stopping:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for r in records:
                say(record=[r.partition, r.offset, r.value.decode()])
    await consumer.stop()


def main() -> None:
    library, bootstrap, topic, group, strategy, session = sys.argv[1:7]
    instance = sys.argv[7] if len(sys.argv) > 7 else None
    signal.signal(signal.SIGTERM, stop)
    args = (bootstrap, topic, group, strategy, int(session), instance)
    if library == "confluent":
        confluent(*args)
    elif library == "kafka-python":
        kafka_python(*args)
    elif library == "aiokafka":
        asyncio.run(aiokafka(*args))
    else:
        raise SystemExit(f"unknown library {library}")


if __name__ == "__main__":
    main()
