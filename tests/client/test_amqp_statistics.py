"""statistics() over amqp://: counts from queue.declare, or everything from the broker's
management API (tidings serve's gateway speaks RabbitMQ's /api/queues/{vhost} with its own
waiting and processing times beside)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidings
from tidings.errors import BrokenResourceError, ConfigError

from ..serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("stats")) / "data").start()
    yield proc
    proc.stop()


async def test_statistics_from_the_management_api(server: ServerProcess) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
    management = f"http://guest:guest@127.0.0.1:{server.http_port}"
    q = f"st-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(url, management_url=management) as client:
        assert client.transport.capabilities.latency_statistics
        await client.send_many(q, [1, 2, 3])
        held = await client.get(q)
        assert held is not None
        stats = (await client.statistics()).queue(q)
        assert (stats.ready, stats.unacked) == (2, 1)
        assert stats.waiting_time.count == 1 and stats.waiting_time.p50_ms is not None
        assert stats.counts["published"] == 3
        await held.ack()


async def test_counts_without_an_api_include_queues_found_not_declared(
        server: ServerProcess) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
    q = f"st-{uuid.uuid4().hex[:8]}"
    async with tidings.connect(url) as first:
        await first.declare_queue(q)
    async with tidings.connect(url) as client:
        assert not client.transport.capabilities.latency_statistics
        await client.send(q, "x")  # found, not declared by this client
        stats = (await client.statistics()).queue(q)
        assert stats.ready == 1 and stats.waiting_time.count == 0


async def test_a_management_url_that_does_not_answer_is_a_clear_error(
        server: ServerProcess) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
    async with tidings.connect(url, management_url=f"http://127.0.0.1:{closed}") as client:
        with pytest.raises(BrokenResourceError, match=r"management API at 127\.0\.0\.1"):
            await client.statistics()
    with pytest.raises(ConfigError, match=r"management_url= is for amqp://"):
        await tidings.connect("memory://", management_url="http://x").open()
