"""SQLite-only behaviour: the directory lock, group commit, what a second process sees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tidings.errors import ResourceLockedError
from tidings.storage import SqliteStore

HOLD = """
import sys, time
from tidings.storage import SqliteStore
store = SqliteStore(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_sqlite_store_refuses_second_process_naming_directory_and_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(ResourceLockedError) as info:
            SqliteStore(tmp_path)
        assert str(tmp_path) in str(info.value)
        assert str(holder.pid) in str(info.value)
        assert "database is locked" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    SqliteStore(tmp_path).close()  # the kernel released the lock of the killed holder


def test_sqlite_store_second_open_in_same_process_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with pytest.raises(ResourceLockedError):
        SqliteStore(tmp_path)
    store.close()


async def test_sqlite_store_group_commits_concurrent_writers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)

    async def writer(seq: int) -> None:
        store.append("q", seq, b"x" * 256)
        await store.sync()

    await asyncio.gather(*(writer(seq) for seq in range(1, 2001)))
    assert store.count("q") == 2000
    assert store.commits < 200, f"{store.commits} commits for 2000 writers: no group commit"
    store.close()


async def test_a_commit_that_never_succeeds_fails_its_waiters_only_at_close(
    tmp_path: Path,
) -> None:
    """Nothing is confirmed that is not on disk: the waiters of a write that keeps failing wait
    (it is retried), and get the error when the store closes without having written it."""
    store = SqliteStore(tmp_path)
    store.append("q", 1, b"ok")
    await store.sync()
    store._writer.execute("CREATE TRIGGER no_more BEFORE INSERT ON messages "
                          "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    store.append("q", 2, b"refused")
    done = store.sync()
    await asyncio.sleep(0.2)
    assert not done.done()
    assert store.load("q", -1, 10) == [(1, b"ok")]
    store.close()
    with pytest.raises(Exception, match="disk says no"):
        await asyncio.wait_for(done, 5)


def test_the_data_directory_and_its_files_are_owner_only(tmp_path: Path) -> None:
    import stat

    from tidings.auth import UserStore

    data = tmp_path / "fresh" / "data"
    store = SqliteStore(data)
    UserStore(data).add_user("alice", "pw")
    store.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("tidings.sqlite3", "users.json", "LOCK"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


async def test_a_failing_disk_delays_writes_and_drops_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk: the batch is retried until it lands, its waiters are not failed, and the
    log has one line for the trouble and one for the recovery, not one per attempt."""
    import logging
    import sqlite3

    store = SqliteStore(tmp_path / "data")
    store.append("q", 1, b"first")
    await store.sync()
    real = store._write
    failures = [0]

    def full_disk(batch: object) -> None:
        if failures[0] < 6:
            failures[0] += 1
            raise sqlite3.OperationalError("database or disk is full")
        real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write", full_disk)
    with caplog.at_level(logging.WARNING, "tidings.storage"):
        store.append("q", 2, b"second")
        store.remove("q", 1)  # an ack made while the disk is full is not lost either
        done = store.sync()
        await asyncio.sleep(0.2)
        assert not done.done()  # neither confirmed nor failed while the disk is full
        assert "database or disk is full" in (store.write_error() or "")  # (the alarm's)
        await asyncio.wait_for(done, 10)
    assert done.exception() is None and failures[0] == 6
    assert store.write_error() is None
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
    assert "database or disk is full" in caplog.records[0].getMessage()
    store.close()
    store = SqliteStore(tmp_path / "data")
    assert store.load("q", -1, 10) == [(2, b"second")]
    store.close()
