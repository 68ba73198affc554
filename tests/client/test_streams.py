"""Streams in the client API: ``client.stream``, ``append``, ``read`` with every start choice
and named readers that resume, over the embedded broker (memory:// and a data directory),
``amqp://`` to a ``tidings serve`` of the test's own and to the machine's RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

import tidings
from tidings.client.streams import StreamReader
from tidings.errors import InvalidArgumentError, NotSupportedError

from ..serverproc import ServerProcess
from ..services import nats_url, rabbitmq_port, redis_url

KINDS = ["memory", "directory", "amqp-tidings", "amqp-rabbitmq"]
#: Where streams are read and named readers kept by the engine core (binding a stream to the
#: events exchange, for replay, is the brokers' alone).
READ_KINDS = [*KINDS, "nats", "redis", "kafka"]


@pytest.fixture(scope="module")
def tidings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("streams")) / "data").start()
    yield proc
    proc.stop()


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "nats":
        return nats_url()
    if request.param == "redis":
        return redis_url()
    if request.param == "kafka":
        return str(request.getfixturevalue("kafka_face"))
    if request.param == "memory":
        return "memory://"
    if request.param == "directory":
        return str(tmp_path / "data")
    if request.param == "amqp-tidings":
        server = request.getfixturevalue("tidings_server")
        return f"amqp://guest:guest@127.0.0.1:{server.port}/"
    return f"amqp://guest:guest@127.0.0.1:{rabbitmq_port()}/"


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


@pytest.fixture(params=READ_KINDS)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, tmp_path)


CREATED: list[str] = []


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    CREATED.append(name)
    return name


@pytest.fixture(autouse=True)
def clean_up_the_shared_broker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Over AMQP, delete the streams and reader queues a test made (the machine's RabbitMQ
    keeps them otherwise)."""
    CREATED.clear()
    url = next((request.getfixturevalue(f) for f in ("url", "any_url")
                if f in request.fixturenames), "")
    yield
    if url.startswith("nats"):
        asyncio.run(_delete_nats_streams(url, list(CREATED)))
        return
    if url.startswith("redis"):
        asyncio.run(_delete_redis_streams(url, list(CREATED)))
        return
    if not url.startswith("amqp"):
        return
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)) as conn:
        ch = conn.channel()
        for name in CREATED:
            for queue in (name, f"tidings.reader.{name}.billing",
                          f"tidings.reader.{name}.audit"):
                ch.queue_delete(queue)


async def _delete_nats_streams(url: str, names: list[str]) -> None:
    """Delete what a test made on the machine's NATS: its streams and readers' offsets."""
    import nats

    from tidings.client.nats_subjects import READERS_STREAM, escape, log_stream_name

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in names:
        with contextlib.suppress(Exception):
            await js.delete_stream(log_stream_name(name))
        with contextlib.suppress(Exception):
            await js.purge_stream(READERS_STREAM, subject=f"tidings.r.{escape(name)}.>")
    await nc.close()


async def _delete_redis_streams(url: str, names: list[str]) -> None:
    """Delete what a test made on the machine's Redis."""
    import redis.asyncio as aioredis

    from tidings.client.redis_streams import ENDS, SIZES, STREAMS, log_key

    r = aioredis.from_url(url)
    for name in names:
        await r.delete(log_key(name), f"tidings:readers:{name}")
        await r.hdel(STREAMS, name)
        await r.hdel(ENDS, name)
        await r.hdel(SIZES, name)
    await r.aclose()


async def take(reader: StreamReader, n: int, timeout: float = 10.0) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []

    async def run() -> None:
        async for record in reader:
            got.append((record.offset, record.text()))
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def nothing_more(reader: StreamReader, wait: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(reader.__anext__(), wait)
    except TimeoutError:
        return True
    return False


async def test_append_and_read_from_every_start(any_url: str) -> None:
    url = any_url
    name = unique("orders")
    async with tidings.connect(url) as client:
        await client.stream(name, max_age="7D")
        ids = [await client.append(name, f"order {i}", headers={"n": i}) for i in range(5)]
        assert len(set(ids)) == 5
        every = [(i, f"order {i}") for i in range(5)]
        async with client.read(name) as records:  # start="first" by default
            assert await take(records, 5) == every
            assert await nothing_more(records)
            await client.append(name, "order 5")  # a reader at the tail gets new records
            assert await take(records, 1) == [(5, "order 5")]
        async with client.read(name, start=2, prefetch=2) as records:
            first = await records.__anext__()
            assert (first.offset, first.text(), first.headers) == (2, "order 2", {"n": 2})
            assert first.timestamp is not None and first.id == ids[2]
            assert await take(records, 3) == [(3, "order 3"), (4, "order 4"), (5, "order 5")]
        async with client.read(name, start="last") as records:
            assert await take(records, 1) == [(5, "order 5")]
        async with client.read(name, start=datetime.timedelta(hours=1)) as records:
            assert len(await take(records, 6)) == 6
        hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        async with client.read(name, start=hour_ago) as records:
            assert len(await take(records, 6)) == 6
        async with client.read(name, start="next") as records:
            assert await nothing_more(records)
        with pytest.raises(InvalidArgumentError, match="start="):
            client.read(name, start="yesterday")
        if not url.startswith("amqp"):  # (statistics over AMQP list queues only)
            stats = await client.statistics()
            assert stats.stream(name).records == 6


async def test_a_named_reader_resumes_after_its_commit(any_url: str) -> None:
    url = any_url
    name = unique("ledger")
    first = await tidings.connect(url)
    await first.stream(name)
    await first.append_many(name, [f"entry {i}" for i in range(6)])
    async with first.read(name, reader="billing") as records:
        assert await take(records, 3) == [(0, "entry 0"), (1, "entry 1"), (2, "entry 2")]
        await records.commit()  # processed up to offset 2
    if url != "memory://":  # a restarted process (memory:// lives as long as its client)
        await first.close()
        first = await tidings.connect(url)
    async with first as client:
        async with client.read(name, reader="billing", start="next") as records:
            assert await take(records, 3) == [(3, "entry 3"), (4, "entry 4"), (5, "entry 5")]
            await records.commit(4)
        if not url.startswith("amqp"):  # the committed place and the lag, in the numbers
            stats = (await client.statistics()).stream(name)
            billing = next(r for r in stats.readers if r.name == "billing" and not r.live)
            assert (stats.records, billing.offset, billing.lag) == (6, 5, 1)
            assert billing.lag_s >= 0 and stats.first_offset == 0 and stats.last_offset == 5
        async with client.read(name, reader="billing") as records:
            assert await take(records, 1) == [(5, "entry 5")]
            if not url.endswith(f":{rabbitmq_port()}/"):  # (RabbitMQ: kept client-side)
                with pytest.raises(InvalidArgumentError, match="past the end"):
                    await records.commit(6)  # would skip the next record appended
        async with client.read(name, reader="billing") as records:
            assert await take(records, 1) == [(5, "entry 5")]
        async with client.read(name, reader="audit") as records:  # a new name: from start
            assert await take(records, 1) == [(0, "entry 0")]
        plain = client.read(name)
        with pytest.raises(InvalidArgumentError, match="named reader"):
            await plain.commit(1)


async def reconnect(client: tidings.Client, url: str) -> tidings.Client:
    """A new client (a restarted process), or the same one where the broker lives only as
    long as its client (memory://)."""
    if url == "memory://":
        return client
    await client.close()
    return await tidings.connect(url)


async def test_a_new_group_replays_retained_events_then_goes_live(url: str) -> None:
    topic = unique("invoices")
    client = await tidings.connect(url)
    await client.keep_events()
    for i in range(3):
        await client.publish(f"{topic}.created", {"n": i})
    await client.publish(f"{unique('other')}.created", {"n": -1})  # another topic

    client = await reconnect(client, url)
    seen: list[int] = []
    group = unique("read-model")

    # (an age: the shared RabbitMQ's log keeps every earlier run's events for a day)
    @client.subscribe(f"{topic}.*", group=group, replay="10m")
    async def on_invoice(message: tidings.ReceivedMessage) -> None:
        seen.append(message.json()["n"])

    await client.start()
    assert seen == [0, 1, 2]  # the history, in order, before going live
    await client.publish(f"{topic}.created", {"n": 3})
    for _ in range(100):
        if len(seen) == 4:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert seen == [0, 1, 2, 3]  # live, and nothing twice
    await client.close()

    if url != "memory://":  # the group exists now: a restarted process does not replay
        async with tidings.connect(url) as client:
            again: list[int] = []

            @client.subscribe(f"{topic}.*", group=group, replay="first")
            async def on_invoice_again(message: tidings.ReceivedMessage) -> None:
                again.append(message.json()["n"])

            await client.start()
            await asyncio.sleep(0.3)
            assert again == []


async def test_replay_without_retained_events_says_what_to_do(tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path / "data")) as client:

        @client.subscribe("a.*", replay="first")
        async def handler(message: tidings.ReceivedMessage) -> None:
            pass

        with pytest.raises(tidings.NotFoundError, match="keep_events"):
            await client.start()
    with pytest.raises(InvalidArgumentError, match="start="):
        tidings.Client("memory://").subscribe("a.*", replay="soon")


async def test_processes_sharing_a_directory_share_named_readers(tmp_path: Path) -> None:
    """The owner of a data directory and a process that joins it through its socket see the
    same streams and the same named readers' offsets (both kept by the broker)."""
    import subprocess
    import sys

    data = str(tmp_path / "data")
    joiner = f"""
import asyncio, tidings
async def main():
    async with tidings.connect({data!r}) as client:
        async with client.read("shared-log", reader="billing") as records:
            async for record in records:
                print(record.offset, record.text(), flush=True)
                await records.commit()
                if record.text() == "e4":
                    break
asyncio.run(main())
"""
    async with tidings.connect(data) as owner:  # the first to open it owns it
        await owner.stream("shared-log")
        await owner.append_many("shared-log", [f"e{i}" for i in range(5)])
        async with owner.read("shared-log", reader="billing") as records:
            assert await take(records, 2) == [(0, "e0"), (1, "e1")]
            await records.commit()
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", joiner], capture_output=True, text=True,
            timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["2", "e2", "3", "e3", "4", "e4"]
        stats = (await owner.statistics()).stream("shared-log")
        assert [(r.name, r.offset, r.lag) for r in stats.readers] == [("billing", 5, 0)]


@pytest.mark.parametrize("engine", ["nats", "redis", "kafka"])
async def test_events_are_not_routed_into_a_stream_over_the_engines(
        engine: str, request: pytest.FixtureRequest) -> None:
    """keep_events needs a broker's binding from the events exchange to a stream; the
    engine core says so, naming what to do instead."""
    url = {"nats": nats_url, "redis": redis_url,
           "kafka": lambda: str(request.getfixturevalue("kafka_face"))}[engine]()
    async with tidings.connect(url) as client:
        with pytest.raises(NotSupportedError, match="append the events to the stream"):
            await client.keep_events()


@pytest.mark.parametrize("engine", ["nats", "redis"])
async def test_retention_drops_whole_records_from_the_head_on_the_engines(engine: str) -> None:
    name = unique("bounded")
    url = nats_url() if engine == "nats" else redis_url()
    try:
        async with tidings.connect(url) as client:
            await client.stream(name, max_bytes=4_000)
            await client.append_many(name, [f"{i:04d}" + "x" * 300 for i in range(40)])
            async with client.read(name, start="first") as records:
                first = await records.__anext__()
                kept = [(first.offset, first.text()[:4])]
                kept += [(o, t[:4]) for o, t in await take(records, 39 - first.offset)]
            assert 0 < first.offset < 39  # the oldest went, the newest stayed
            assert kept == [(i, f"{i:04d}") for i in range(first.offset, 40)]
            async with client.read(name, start=0) as records:  # before the head: the head
                assert (await records.__anext__()).offset == first.offset
    finally:
        await (_delete_nats_streams if engine == "nats" else _delete_redis_streams)(url, [name])
