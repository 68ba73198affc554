"""StreamFiles: group commit over several streams, names, deletion, reopening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidings.errors import InvalidArgumentError
from tidings.storage.streams import StreamFiles


async def test_many_appends_share_few_syncs_and_survive_a_reopen(tmp_path: Path) -> None:
    streams = StreamFiles(tmp_path)
    for name in ("orders", "audit", "events"):
        streams.open(name, max_segment_bytes=4096)  # small segments: rolls during syncs

    async def append_and_confirm(i: int) -> int:
        offset = streams.append(("orders", "audit", "events")[i % 3], [f"r{i}".encode() * 30],
                                1_000 + i)
        await streams.sync()
        return offset

    offsets = await asyncio.gather(*(append_and_confirm(i) for i in range(900)))
    assert sorted(offsets) == sorted(list(range(300)) * 3)
    assert streams.syncs < 100, f"{streams.syncs} fdatasync rounds for 900 confirms"
    streams.close()

    again = StreamFiles(tmp_path)
    assert again.names() == ["audit", "events", "orders"]
    log = again.open("audit", max_segment_bytes=4096)
    assert log.next_offset == 300 and log.segment_count() > 1
    assert [r.payload for r in log.read(0, 1000)] == \
        [f"r{i}".encode() * 30 for i in range(900) if i % 3 == 1]
    again.close()


async def test_any_utf8_name_is_a_stream_and_delete_removes_it(tmp_path: Path) -> None:
    streams = StreamFiles(tmp_path)
    for name in ("a/b", "..", "zählung ✓"):
        streams.append(name, [b"x"], 1)
    await streams.sync()
    assert streams.names() == sorted(["a/b", "..", "zählung ✓"])
    with pytest.raises(InvalidArgumentError):
        streams.append("", [b"x"], 1)
    streams.delete("a/b")
    assert "a/b" not in streams.names()
    assert streams.open("a/b").next_offset == 0, "a deleted stream starts again empty"
    streams.close()


async def test_a_sync_with_nothing_appended_resolves(tmp_path: Path) -> None:
    streams = StreamFiles(tmp_path)
    await asyncio.wait_for(streams.sync(), 5)
    streams.close()
