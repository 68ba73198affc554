"""Shared fixtures: a fake clock, both stores, and a broker built on them; Hypothesis profiles."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tidings.routing.broker import Broker
from tidings.storage import MemoryStore, SqliteStore, Store
from tidings.testing import FakeClock

# Hypothesis profiles. "ci" (chosen when CI is set) replays the same examples on every run,
# so a submission's CI passes or fails on its code, not on the draw; a failing example is
# printed with its blob. "explore" is for a developer hunting bugs: many more examples, fresh
# ones each run (TIDINGS_HYPOTHESIS_PROFILE=explore python -m pytest tests/routing).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("TIDINGS_HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "default"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _opener(kind: str, tmp_path: Path) -> Callable[[Store | None], Store]:
    def open_store(previous: Store | None) -> Store:
        if kind == "memory":
            return MemoryStore() if previous is None else previous.reopen()  # type: ignore[attr-defined]
        if previous is not None:
            previous.close()
        return SqliteStore(tmp_path / "data")

    return open_store


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    """A started broker on the memory store and the fake clock."""
    b = Broker(MemoryStore(), clock)
    b.start()
    return b


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Store | None], Store]:
    return _opener(request.param, tmp_path)


class BrokerFactory:
    """Builds a broker on a store and can 'restart' it on the same store."""

    def __init__(self, open_store: Callable[[Store | None], Store], clock: FakeClock) -> None:
        self.open_store, self.clock = open_store, clock
        self.store: Store | None = None
        self.broker: Broker | None = None

    def start(self, **options: object) -> Broker:
        self.store = self.open_store(None)
        self.broker = Broker(self.store, self.clock, **options)  # type: ignore[arg-type]
        self.broker.start()
        return self.broker

    async def restart(self, **options: object) -> Broker:
        """Stop without a clean session close (like a crash after the last commit)."""
        assert self.broker is not None and self.store is not None
        await self.broker.sync()
        self.broker.stop_timers()
        self.store = self.open_store(self.store)
        self.broker = Broker(self.store, self.clock, **options)  # type: ignore[arg-type]
        self.broker.start()
        return self.broker


@pytest.fixture
def brokers(
    open_store: Callable[[Store | None], Store], clock: FakeClock
) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(open_store, clock)
    yield factory
    if factory.store is not None:
        factory.store.close()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or file left open is reported (as an error: warnings are errors here) in the
    test that leaked it, not in whichever later test the garbage collector happens to run."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def kafka_face(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kafka://`` to a ``tidings serve`` of the session's own (its Kafka face; groups form
    at once instead of after Kafka's initial rebalance delay)."""
    from .serverproc import running

    data = tmp_path_factory.mktemp("kafka-face") / "data"
    with running(data, "--kafka-port", "0", "--http-port", "-1",
                 "--kafka-group-initial-rebalance-delay-ms", "0") as server:
        yield f"kafka://127.0.0.1:{server.kafka_port}"


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kafka://`` to Tansu, the Kafka-compatible peer, started for the session."""
    from .engines import EngineProcess

    server = EngineProcess("tansu", tmp_path_factory.mktemp("tansu")).start()
    yield server.url
    server.stop()
