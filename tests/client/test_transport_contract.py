"""The transport conformance suite over every transport: the embedded broker on both stores,
``amqp://`` to a ``tidings serve`` of the test's own, ``amqp://`` to the machine's RabbitMQ,
``nats://`` to its NATS JetStream, ``redis://`` to its Redis, and ``kafka://`` to the Kafka face
of a ``tidings serve`` and to Tansu (both started for the session).
A check is skipped only when the transport declares it lacks a capability, with its reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tidings.client.local import LocalTransport
from tidings.client.transport import Transport
from tidings.routing.broker import Broker
from tidings.storage import MemoryStore, SqliteStore
from tidings.testing import TRANSPORT_CHECKS
from tidings.testing.contracts import run_transport_check
from tidings.urls import open_transport

from ..serverproc import ServerProcess
from ..services import nats_url, rabbitmq_url, redis_url

KINDS = ["memory", "sqlite", "amqp-tidings", "amqp-rabbitmq", "nats", "redis", "kafka-tidings",
         "kafka-tansu"]


@pytest.fixture(scope="module")
def tidings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("contract")) / "data").start()
    yield proc
    proc.stop()


@pytest.fixture
def opener(request: pytest.FixtureRequest, tmp_path: Path
           ) -> Callable[[], Awaitable[Transport]]:
    kind = request.param
    if kind == "amqp-tidings":
        server = request.getfixturevalue("tidings_server")
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
    elif kind == "amqp-rabbitmq":
        url = rabbitmq_url()
    elif kind == "nats":
        url = nats_url()
    elif kind == "redis":
        url = redis_url()
    elif kind == "kafka-tidings":
        url = request.getfixturevalue("kafka_face")
    elif kind == "kafka-tansu":
        url = request.getfixturevalue("tansu")
    else:
        async def local() -> Transport:
            store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "data")
            broker = Broker(store)
            broker.start()
            return LocalTransport(broker)

        return local

    async def remote() -> Transport:
        return await open_transport(url)

    return remote


@pytest.mark.parametrize("opener", KINDS, indirect=True)
@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda c: c.__name__)
async def test_transport_meets_contract(
    check: Callable[[Transport], Awaitable[None]],
    opener: Callable[[], Awaitable[Transport]],
) -> None:
    reason = await run_transport_check(check, opener)
    if reason is not None:
        pytest.skip(reason)




def test_the_docs_capability_table_is_the_one_the_code_declares() -> None:
    from tidings.testing.capabilities import BEGIN, END, capability_table

    docs = (Path(__file__).parents[2] / "docs" / "workers.md").read_text()
    printed = docs[docs.index(BEGIN):docs.index(END) + len(END)]
    assert printed == capability_table(), "run: python -m tidings.testing > the table"
