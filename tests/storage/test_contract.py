"""The store conformance suite, over MemoryStore and SqliteStore."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tidings.storage import Store
from tidings.testing import STORE_CHECKS


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
async def test_store_meets_contract(
    check: Callable[[Callable[[Store | None], Store]], Awaitable[None]],
    open_store: Callable[[Store | None], Store],
) -> None:
    await check(open_store)
