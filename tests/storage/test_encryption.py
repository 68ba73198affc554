"""Encryption at rest of the queue store: with a keyring no message body or header value is on
disk in plain (the database and its write-ahead log), a wrong or missing key stops start-up
naming the key, a flipped bit or a moved record is caught and quarantined (never delivered),
plain data stays readable once encryption is on and is sealed by an explicit rewrite, and
after a rotation the old master key can go."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tidings
from tidings.errors import ConfigError
from tidings.storage.keys import KEY_ENV

SECRET = b"card-4111-1111-1111-1111"
HEADER = "ssn-078-05-1120"


def _key(ident: str, fill: int) -> str:
    return f"{ident}:{base64.b64encode(bytes([fill]) * 32).decode()}"


def _plaintext_on_disk(data: Path) -> list[str]:
    """Files of the directory holding the secret body or header value (WAL included)."""
    found = []
    for path in data.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            if SECRET in raw or HEADER.encode() in raw:
                found.append(path.name)
    return found


async def _send(data: Path, n: int = 20) -> None:
    async with tidings.connect(str(data)) as client:
        await client.declare_queue("payments")
        for i in range(n):
            await client.send("payments", {"card": SECRET.decode(), "i": i},
                              headers={"pii": HEADER})


async def _take(data: Path) -> list[int]:
    got = []
    async with tidings.connect(str(data)) as client:
        while (m := await client.get("payments")) is not None:
            got.append(m.json()["i"])
            await m.ack()
    return got


async def test_nothing_plain_on_disk_and_a_wrong_key_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv(KEY_ENV, _key("k1", 1))
    async with tidings.connect(str(data)) as client:
        await client.declare_queue("payments")
        for i in range(20):
            await client.send("payments", {"card": SECRET.decode(), "i": i},
                              headers={"pii": HEADER})
        assert _plaintext_on_disk(data) == []  # while open: the WAL holds them, sealed
    assert _plaintext_on_disk(data) == []
    monkeypatch.setenv(KEY_ENV, _key("k1", 2))  # the same id, another key
    with pytest.raises(ConfigError, match="master key 'k1' does not open"):
        async with tidings.connect(str(data)):
            pass
    monkeypatch.setenv(KEY_ENV, _key("k2", 2))
    with pytest.raises(ConfigError, match="master key 'k1', which the keyring does not hold"):
        async with tidings.connect(str(data)):
            pass
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=r"is encrypted .*master key 'k1'"):
        async with tidings.connect(str(data)):
            pass
    monkeypatch.setenv(KEY_ENV, _key("k1", 1))
    assert await _take(data) == list(range(20))


async def test_a_flipped_bit_or_a_moved_record_is_quarantined_not_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv(KEY_ENV, _key("k1", 1))
    await _send(data, 4)
    db = sqlite3.connect(data / "tidings.sqlite3")
    rows = db.execute("SELECT seq, data FROM messages ORDER BY seq").fetchall()
    flipped = bytearray(rows[0][1])
    flipped[-20] ^= 0x01
    db.execute("UPDATE messages SET data = ? WHERE seq = ?", (bytes(flipped), rows[0][0]))
    db.execute("UPDATE messages SET data = ? WHERE seq = ?", (rows[2][1], rows[1][0]))  # moved
    db.commit()
    db.close()
    assert await _take(data) == [2, 3]
    async with tidings.connect(str(data)) as client:
        broker = client.transport.broker  # type: ignore[attr-defined]
        assert len(broker.quarantined()) == 2


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "keys",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


async def test_plain_data_stays_readable_and_is_sealed_by_a_rewrite_and_rotation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.delenv(KEY_ENV, raising=False)
    await _send(data, 5)  # written before encryption was on
    monkeypatch.setenv(KEY_ENV, _key("k1", 1))
    async with tidings.connect(str(data)) as client:  # plain ones read; new ones sealed
        await client.send("payments", {"card": SECRET.decode(), "i": 5}, headers={"pii": HEADER})
    out = _cli(data, "status")
    assert out.returncode == 0, out.stderr
    assert "messages: 5 plain, 1 data key 1" in out.stdout
    assert _plaintext_on_disk(data)  # the old ones still are, until rewritten
    out = _cli(data, "rewrite")  # the five messages, and the queue's plain definitions
    assert out.returncode == 0 and "sealed again" in out.stdout, out.stderr
    out = _cli(data, "status")
    assert "messages: 6 data key 1" in out.stdout and "plain" not in out.stdout
    assert _plaintext_on_disk(data) == []
    monkeypatch.setenv(KEY_ENV, f"{_key('k2', 7)},{_key('k1', 1)}")  # k2 first: active
    out = _cli(data, "rotate")
    assert out.returncode == 0 and "rewrapped by master key 'k2'" in out.stdout, out.stderr
    monkeypatch.setenv(KEY_ENV, _key("k2", 7))  # k1 removed
    assert await _take(data) == list(range(6))
    out = _cli(data, "status", "--json")
    assert '"1": "k2"' in out.stdout and '"2": "k2"' in out.stdout
    monkeypatch.delenv(KEY_ENV)
    out = _cli(data, "rotate")
    assert out.returncode == 1 and "needs the keyring" in out.stderr
