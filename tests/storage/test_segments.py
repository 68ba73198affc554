"""SegmentLog: dense offsets, seeks by offset and time, whole-segment retention, recovery
from torn writes and from kill -9."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tidings.errors import InvalidArgumentError
from tidings.storage.segments import HEAD, INDEX_EVERY_BYTES, SegmentLog


def payload(i: int, size: int = 100) -> bytes:
    return f"{i:08d}".encode() * (size // 8)


def test_offsets_are_dense_and_reads_start_where_asked(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=20_000)
    assert (log.first_offset, log.next_offset, len(log)) == (0, 0, 0)
    for i in range(0, 1000, 10):
        assert log.append([payload(j) for j in range(i, i + 10)], 1_000 + i) == i
    log.sync()
    assert log.segment_count() > 5, "segments roll at max_segment_bytes"
    assert (log.first_offset, log.next_offset, len(log)) == (0, 1000, 1000)
    for start in (0, 1, 99, 500, 777, 999):
        got = log.read(start, max_records=50)
        assert [r.offset for r in got] == list(range(start, min(start + 50, 1000)))
        assert all(r.payload == payload(r.offset) for r in got)
    assert log.read(1000) == []
    got = log.read(0, max_records=10_000, max_bytes=1_000)  # stops once 1,000 bytes are in
    assert sum(len(r.payload) for r in got[:-1]) < 1_000 <= sum(len(r.payload) for r in got)


def test_a_timestamp_finds_the_first_record_at_or_after_it(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=50_000)
    for i in range(2000):
        log.append([payload(i)], 10_000 + i * 10)
    assert log.offset_at(0) == 0
    assert log.offset_at(10_000 + 1234 * 10) == 1234
    assert log.offset_at(10_000 + 1234 * 10 - 5) == 1234
    assert log.offset_at(10**9) == 2000
    assert (log.first_timestamp_ms(), log.last_timestamp_ms()) == (10_000, 10_000 + 19_990)


def test_reopened_log_reads_the_same_and_appends_after(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=30_000)
    for i in range(700):
        log.append([payload(i)], i)
    log.close()
    again = SegmentLog(tmp_path, max_segment_bytes=30_000)
    assert again.next_offset == 700 and again.segment_count() == log.segment_count()
    assert again.append([b"more"], 700) == 700
    assert [r.offset for r in again.read(650, 100)] == list(range(650, 701))
    assert again.read(700)[0].payload == b"more"


def test_retention_deletes_whole_segments_oldest_first(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=10_000)
    for i in range(1000):
        log.append([payload(i)], 1_000 * i)
    segments, size = log.segment_count(), log.size_bytes
    gone = log.retain(max_bytes=size // 2)
    assert gone > 0 and log.size_bytes <= size // 2 and log.segment_count() < segments
    assert log.first_offset == gone and log.read(0)[0].offset == gone
    assert len(list(tmp_path.glob("*.seg"))) == log.segment_count()
    # by age: everything older than 100 s at t = 1,000 s goes, the active segment stays
    gone_by_age = log.retain(max_age_ms=100_000, now_ms=1_000_000)
    assert gone_by_age > 0
    assert log.first_timestamp_ms() is not None
    assert all(r.timestamp_ms >= 1_000_000 - 100_000 - 10_000 * 1_000 for r in log.read(0))
    assert log.retain(max_bytes=0) >= 0 and log.segment_count() == 1  # never the active one


def test_a_torn_tail_is_cut_at_the_last_whole_record(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(100):
        log.append([payload(i)], i)
    log.close()
    segment = next(tmp_path.glob("*.seg"))
    whole = segment.stat().st_size
    record = HEAD.size + len(payload(0))
    with open(segment, "r+b") as f:  # half of a 101st record, then garbage in the 100th
        f.seek(whole)
        f.write(HEAD.pack(len(payload(0)), 0, 100, 100) + b"half")
        f.seek(whole - 3)
        f.write(b"XYZ")
    again = SegmentLog(tmp_path)
    assert again.next_offset == 99, "the damaged 100th record and the torn 101st are gone"
    assert segment.stat().st_size == whole - record
    assert [r.offset for r in again.read(0, 1000)] == list(range(99))
    assert again.append([b"next"], 1) == 99


def test_an_index_behind_its_records_is_rebuilt(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(3000):
        log.append([payload(i, 200)], i)
    log.close()
    index = next(tmp_path.glob("*.idx"))
    entries = index.stat().st_size // 24
    assert entries >= 3000 * 220 // INDEX_EVERY_BYTES
    index.write_bytes(index.read_bytes()[:24])  # only the first entry survived
    again = SegmentLog(tmp_path)
    assert index.stat().st_size // 24 == entries
    assert again.read(2999)[0].payload == payload(2999, 200)


CHILD = textwrap.dedent("""
    import os, sys, time
    from tidings.storage.segments import SegmentLog
    log = SegmentLog(sys.argv[1], max_segment_bytes=40_000)
    out = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    print("ready", flush=True)
    while True:
        n = 1 + log.next_offset % 17
        first = log.append([f"r{log.next_offset + k}".encode() * 20 for k in range(n)],
                           int(time.time() * 1000))
        log.sync()
        os.write(out, f"{first} {first + n - 1}\\n".encode())
""")


@pytest.mark.crash
def test_kill_9_during_appends_keeps_every_synced_record(tmp_path: Path) -> None:
    """Every record confirmed (synced) before the kill is there, offsets stay dense and
    unchanged, and nothing half-written is read; the log goes on after each restart."""
    data, confirmed_log = tmp_path / "log", tmp_path / "confirmed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random()
    for _ in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(confirmed_log)],
                                 stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.3))
        child.kill()
        child.wait()
        child.stdout.close()
    confirmed = 0
    for line in confirmed_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            confirmed = max(confirmed, int(parts[1]) + 1)
    log = SegmentLog(data, max_segment_bytes=40_000)
    assert confirmed > 100, "the children confirmed too little to prove anything"
    assert log.next_offset >= confirmed, "a confirmed record was lost"
    records = []
    offset = 0
    while batch := log.read(offset, 5000):
        records += batch
        offset = batch[-1].offset + 1
    assert [r.offset for r in records] == list(range(log.next_offset))
    assert all(r.payload == f"r{r.offset}".encode() * 20 for r in records)


def test_a_log_far_larger_than_a_read_is_read_with_bounded_memory(tmp_path: Path) -> None:
    """80 MB of records read from the first in 1 MB reads: the process grows by a few MB
    at most (the benchmark does the same with 2 GB)."""
    from tidings.resources import rss_mb

    log = SegmentLog(tmp_path, max_segment_bytes=8 * 2**20)
    chunk = [os.urandom(4096) for _ in range(16)]
    for i in range(80 * 2**20 // (4096 * 16)):
        log.append(chunk, i)
    log.sync()
    before = rss_mb()
    offset, seen, peak = 0, 0, before
    while batch := log.read(offset, max_records=100_000, max_bytes=2**20):
        seen += len(batch)
        offset = batch[-1].offset + 1
        peak = max(peak, rss_mb())
    assert seen == log.next_offset == 80 * 2**20 // 4096
    assert peak - before < 20, f"reading grew the process by {peak - before:.0f} MB"


def test_a_batch_entry_takes_its_offsets_reads_whole_and_survives_reopening(
        tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=5_000)
    assert log.append([b"a", b"b"], 1) == 0
    assert log.append_batch(b"batch of five", 5, 2) == 2  # offsets 2-6
    assert log.append([b"h"], 3) == 7
    with pytest.raises(InvalidArgumentError):
        log.append_batch(b"empty", 0, 4)
    found = log.read(4, max_records=10)  # inside the batch: the batch comes whole
    assert [(r.offset, r.count, r.batch, r.payload) for r in found] == [
        (2, 5, True, b"batch of five"), (7, 1, False, b"h")]
    assert found[0].end == 7
    for i in range(100):  # roll segments past the batch
        log.append_batch(payload(i), 3, 10 + i)
    log.close()
    again = SegmentLog(tmp_path)
    assert again.next_offset == 8 + 300
    assert again.segment_count() > 2
    assert [r.offset for r in again.read(0, 5)] == [0, 1, 2, 7, 8]
    assert [r.offset for r in again.read(160, 2)] == [158, 161]  # 158-160, then 161-163
    assert again.offset_at(50) == 8 + 3 * 40


def test_a_torn_batch_at_the_tail_is_cut_whole(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    log.append([b"a"], 1)
    log.append_batch(b"x" * 100, 4, 2)
    log.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "r+b") as f:  # the batch's last byte lost
        f.truncate(segment.stat().st_size - 1)
    again = SegmentLog(tmp_path)
    assert again.next_offset == 1, "no part of a torn batch is kept"
    assert again.append_batch(b"y", 2, 3) == 1
