"""Logins on NATS and Redis servers of the test's own that require them: the right password
connects, a wrong or missing one is refused at once with AccessRefusedError (nats-py alone
would keep retrying)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidings

from ..engines import EngineProcess

SERVERS = {"nats": ("--user", "alice", "--pass", "s3cret"), "redis": ("--requirepass", "s3cret")}


@pytest.mark.parametrize("kind", ["nats", "redis"])
async def test_a_password_is_required_and_checked(kind: str, tmp_path: Path) -> None:
    engine = EngineProcess(kind, tmp_path / kind, *SERVERS[kind]).start()
    try:
        base = engine.url.split("//", 1)[1]
        scheme = f"{kind}://"
        user = "alice" if kind == "nats" else ""
        async with tidings.connect(f"{scheme}{user}:s3cret@{base}") as client:
            await client.send("orders", {"n": 1})
            message = await client.get("orders")
            assert message is not None and message.json() == {"n": 1}
            await message.ack()
        for url in (f"{scheme}{user}:wrong@{base}", engine.url):
            with pytest.raises(tidings.AccessRefusedError, match="login refused by") as info:
                await tidings.connect(url).open()
            assert "wrong" not in str(info.value), "the password is never printed"
    finally:
        engine.stop()
