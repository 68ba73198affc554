"""The store conformance suite, over MemoryStore and SqliteStore (plain and encrypted)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tidings.storage import SqliteStore, Store
from tidings.storage.keys import Keyring
from tidings.testing import STORE_CHECKS


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
async def test_store_meets_contract(
    check: Callable[[Callable[[Store | None], Store]], Awaitable[None]],
    open_store: Callable[[Store | None], Store],
) -> None:
    await check(open_store)


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
async def test_encrypted_store_meets_contract(
    check: Callable[[Callable[[Store | None], Store]], Awaitable[None]], tmp_path: Path,
) -> None:
    """The same checks with every record sealed (encryption at rest)."""
    keyring = Keyring.parse("contract:" + base64.b64encode(b"c" * 32).decode(), "test")

    def open_store(previous: Store | None) -> Store:
        if previous is not None:
            previous.close()
        store = SqliteStore(tmp_path / "data", keyring=keyring)
        assert store.sealer is not None
        return store

    await check(open_store)
