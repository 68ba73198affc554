"""The transport conformance suite over the embedded transport, on both stores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tidings.client.local import LocalTransport
from tidings.client.transport import Transport
from tidings.routing.broker import Broker
from tidings.storage import MemoryStore, SqliteStore
from tidings.testing import TRANSPORT_CHECKS


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("check", TRANSPORT_CHECKS, ids=lambda c: c.__name__)
async def test_local_transport_meets_contract(
    check: Callable[[Callable[[], Awaitable[Transport]]], Awaitable[None]],
    kind: str,
    tmp_path: Path,
) -> None:
    async def open_transport() -> Transport:
        store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "data")
        broker = Broker(store)
        broker.start()
        return LocalTransport(broker)

    await check(open_transport)
