"""Encryption at rest of stream segments: with a keyring every segment has its own data key,
wrapped by the master key in a file beside it, and every record's (or Kafka batch's)
payload is sealed and bound to its stream and offset; no record is on disk in plain; a
flipped bit or a record moved to another offset is never delivered; a plain stream gets a
new sealed segment when encryption comes on and is sealed by ``tidings keys rewrite``;
rotation rewraps the segments' keys so the old master key can go; retention deletes a key
with its segment; a crash in the middle of a rewrite finishes or forgets it."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import tidings
from tidings.errors import ConfigError
from tidings.storage import segment_keys, segments
from tidings.storage.keys import KEY_ENV, Keyring
from tidings.storage.segments import HEAD, SegmentLog

SECRET = b"iban-DE89370400440532013000"


def _line(ident: str, fill: int) -> str:
    return f"{ident}:{base64.b64encode(bytes([fill]) * 32).decode()}"


def _ring(text: str) -> Keyring:
    return Keyring.parse(text, "test")


def _plain_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()
                  and SECRET in p.read_bytes())


def _record(i: int) -> bytes:
    return SECRET + f"-{i:06d}".encode() + bytes(40)


def test_every_segment_has_its_own_key_and_no_record_is_plain(tmp_path: Path) -> None:
    ring = _ring(_line("k1", 1))
    log = SegmentLog(tmp_path / "s", max_segment_bytes=4_000, keyring=ring)
    for i in range(0, 200, 4):
        log.append([_record(j) for j in range(i, i + 4)], 1_000 + i)
    log.append_batch(SECRET + b"-a kafka batch", 5, 5_000)
    log.sync()
    assert log.segment_count() > 3
    keys = sorted((tmp_path / "s").glob("*.key"))
    assert len(keys) == log.segment_count()
    assert len({json.loads(k.read_text())["wrapped"] for k in keys}) == len(keys)
    assert _plain_files(tmp_path) == []
    got = log.read(0, max_records=1_000)
    assert [r.payload for r in got[:200]] == [_record(i) for i in range(200)]
    assert (got[-1].offset, got[-1].count, got[-1].payload) == (200, 5, SECRET + b"-a kafka batch")
    log.close()
    again = SegmentLog(tmp_path / "s", max_segment_bytes=4_000, keyring=ring)  # recovery
    assert again.next_offset == 205 and again.read(150, 1)[0].payload == _record(150)
    # retention takes a segment's key with it
    removed = again.retain(max_bytes=again.size_bytes // 2)
    assert removed > 0
    assert len(list((tmp_path / "s").glob("*.key"))) == again.segment_count()
    again.close()
    with pytest.raises(ConfigError, match="encrypted under master key 'k1'"):
        SegmentLog(tmp_path / "s")
    with pytest.raises(ConfigError, match="master key 'k1' does not open"):
        SegmentLog(tmp_path / "s", keyring=_ring(_line("k1", 9)))
    with pytest.raises(ConfigError, match="'k1', which the keyring does not hold"):
        SegmentLog(tmp_path / "s", keyring=_ring(_line("k2", 2)))


def _entries(path: Path) -> list[tuple[int, int, int]]:
    """(position, length, offset) of each record entry of a segment file."""
    raw, found, at = path.read_bytes(), [], 0
    while at < len(raw):
        length, _, offset, _ = HEAD.unpack_from(raw, at)
        found.append((at, length, offset))
        at += HEAD.size + length
    return found


def test_a_flipped_bit_or_a_moved_record_is_not_delivered(tmp_path: Path) -> None:
    ring = _ring(_line("k1", 1))
    log = SegmentLog(tmp_path / "s", keyring=ring)
    log.append([_record(i) for i in range(6)], 1_000)
    log.sync()
    log.close()
    path = next((tmp_path / "s").glob("*.seg"))
    raw = bytearray(path.read_bytes())
    entries = _entries(path)
    at, length, _ = entries[1]
    raw[at + HEAD.size + length - 3] ^= 0x01  # a flipped bit in record 1 (its CRC fixed)
    crc = zlib.crc32(bytes(raw[at + 8:at + HEAD.size + length]))
    struct.pack_into(">I", raw, at + 4, crc)
    # record 4's sealed payload moved into record 3's place (same length, CRC fixed)
    at3, _, _ = entries[3]
    at4, length4, _ = entries[4]
    raw[at3 + HEAD.size:at3 + HEAD.size + length4] = raw[at4 + HEAD.size:at4 + HEAD.size + length4]
    struct.pack_into(">I", raw, at3 + 4, zlib.crc32(bytes(raw[at3 + 8:at3 + HEAD.size + length4])))
    path.write_bytes(bytes(raw))
    log = SegmentLog(tmp_path / "s", keyring=ring)
    got = log.read(0)
    assert [r.offset for r in got] == [0, 2, 4, 5]
    assert [r.payload for r in got] == [_record(i) for i in (0, 2, 4, 5)]
    log.close()


def test_a_crash_in_a_rewrite_finishes_or_forgets_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plain = SegmentLog(tmp_path / "s")
    plain.append([_record(i) for i in range(10)], 1_000)
    plain.close()
    ring = _ring(_line("k1", 1))
    log = SegmentLog(tmp_path / "s", keyring=ring)
    assert log.segment_count() == 2 and log.plain_segments() == 1  # sealed ones start anew

    def crash(copy: Path, segment: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(segments, "_swap_in", crash)
    with pytest.raises(OSError, match="power cut"):
        log.seal_plain()  # the key file is written: the swap is committed
    log.close()
    monkeypatch.undo()
    again = SegmentLog(tmp_path / "s", keyring=ring)
    assert again.plain_segments() == 0
    assert [r.payload for r in again.read(0)] == [_record(i) for i in range(10)]
    again.close()
    assert _plain_files(tmp_path) == []
    # a copy whose key file never made it is forgotten: the plain segment stays as it was
    other = SegmentLog(tmp_path / "t")
    other.append([_record(1)], 1)
    other.close()
    copy = tmp_path / "t" / ("0" * 20 + ".seg.sealed")
    copy.write_bytes(b"half a copy")
    reopened = SegmentLog(tmp_path / "t", keyring=ring)
    assert not copy.exists() and reopened.read(0)[0].payload == _record(1)
    reopened.close()


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "keys",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


async def _append(data: Path, start: int, n: int) -> None:
    async with tidings.connect(str(data)) as client:
        await client.stream("ledger")
        for i in range(start, start + n):
            await client.append("ledger", {"iban": SECRET.decode(), "i": i})


async def _read(data: Path) -> list[int]:
    got: list[int] = []
    async with tidings.connect(str(data)) as client, \
            client.read("ledger", start="first") as records:
        async for record in records:
            got.append(record.json()["i"])
            if record.json()["i"] == 9:
                break
    return got


async def test_a_plain_stream_is_sealed_by_a_rewrite_and_a_rotation_frees_the_old_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.delenv(KEY_ENV, raising=False)
    await _append(data, 0, 5)  # written before encryption was on
    monkeypatch.setenv(KEY_ENV, _line("k1", 1))
    await _append(data, 5, 5)  # into a new segment, sealed
    streams = data / "streams"
    out = _cli(data, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stream_segments"] == {"plain": 1, "master key k1": 1}
    assert _plain_files(streams)  # the old records still are, until rewritten
    out = _cli(data, "rewrite")
    assert out.returncode == 0 and "1 stream segment(s) sealed" in out.stdout, out.stderr
    assert _plain_files(streams) == []
    monkeypatch.setenv(KEY_ENV, f"{_line('k2', 7)},{_line('k1', 1)}")  # k2 first: active
    out = _cli(data, "rotate")
    assert out.returncode == 0, out.stderr
    assert "2 stream segment key(s) rewrapped by master key 'k2'" in out.stdout
    assert {json.loads(k.read_text())["master"] for k in streams.rglob("*.key")} == {"k2"}
    monkeypatch.setenv(KEY_ENV, _line("k2", 7))  # k1 removed
    assert await _read(data) == list(range(10))
    out = _cli(data, "status")
    assert "stream segments: 2 master key k2" in out.stdout
    for path, base in segment_keys.segment_files(streams):
        assert segment_keys.master_of(path) == "k2", (path, base)
