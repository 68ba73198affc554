"""The tidings command, run as a real process: output, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tidings


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_bad_flag_is_one_line_and_exit_code_2() -> None:
    out = run("--no-such-flag", "queues")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unrecognized arguments" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_dir_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    out = run("--data-dir", str(tmp_path / "nope"), "queues")
    assert out.returncode == 1
    assert out.stderr.strip() == f"tidings: error: no data directory '{tmp_path / 'nope'}' " \
                                 "(see --data-dir)"


def test_queues_stats_and_dead_letters(tmp_path: Path) -> None:
    with tidings.connect_blocking(str(tmp_path)) as client:
        client.send("jobs", {"n": 1})
        client.send("jobs", {"n": 2})
        m = client.get("jobs")
        assert m is not None
        m.reject()
    out = run("--data-dir", str(tmp_path), "queues")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:]}
    assert lines["jobs"][:2] == ["1", "0"] and lines["jobs.dead"][:2] == ["1", "0"]
    out = run("--data-dir", str(tmp_path), "stats", "--queue", "jobs")
    assert out.returncode == 0 and '"ready": 1' in out.stdout
    out = run("--data-dir", str(tmp_path), "dead-letters", "jobs")
    assert "rejected" in out.stdout
    out = run("--data-dir", str(tmp_path), "dead-letters", "jobs", "--replay")
    assert out.stdout.strip() == "replayed 1"
    out = run("--data-dir", str(tmp_path), "stats", "--queue", "nope")
    assert out.returncode == 1 and out.stderr.strip() == "tidings: error: no queue 'nope'"


def test_serve_bad_flag_value_is_one_line_exit_2() -> None:
    out = run("serve", "--amqp-port", "not-a-port")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--amqp-port" in out.stderr and "invalid int value" in out.stderr


def test_inspecting_a_directory_a_server_holds_points_to_the_http_api(tmp_path: Path) -> None:
    from tests.serverproc import ServerProcess

    server = ServerProcess(tmp_path / "data").start()
    try:
        out = run("--data-dir", str(tmp_path / "data"), "queues")
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert f"in use by process {server.proc.pid}" in out.stderr  # type: ignore[union-attr]
        assert "GET /api/queues" in out.stderr
    finally:
        server.stop()


def test_an_unreadable_record_is_quarantined_listed_and_exported(tmp_path: Path) -> None:
    import json
    import struct

    from tidings.storage import SqliteStore

    data = tmp_path / "data"
    with tidings.connect_blocking(str(data)) as client:
        for n in range(3):
            client.send("jobs", {"n": n})
    store = SqliteStore(data)
    key = "/\x1fjobs"
    seq = store.load(key, -1, 10)[1][0]
    meta = b'{"k":"jobs","t0":1,"h":{"$b":"!"}}'
    store.replace(key, seq, b"\x00" + struct.pack(">I", len(meta)) + meta)
    store.close()

    out = run("--data-dir", str(data), "queues")  # opening the broker moves the record aside
    assert out.returncode == 0, out.stderr
    ready = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[1:]}
    assert ready["jobs"] == "2"
    assert "moved to the quarantine" in out.stderr
    out = run("--data-dir", str(data), "quarantine")
    assert out.returncode == 0, out.stderr
    [row] = out.stdout.splitlines()[1:]
    assert row.split()[:3] == [str(seq), "/", "jobs"] and "unreadable record" in row
    out = run("--data-dir", str(data), "quarantine", "--export", str(tmp_path / "out"), "--drop")
    assert out.returncode == 0, out.stderr
    [entry] = json.loads((tmp_path / "out" / "index.json").read_text())
    assert (entry["queue"], entry["seq"]) == ("jobs", seq)
    assert (tmp_path / "out" / entry["file"]).read_bytes()[5:] == meta
    assert run("--data-dir", str(data), "quarantine").stdout.splitlines()[1:] == []
    with tidings.connect_blocking(str(data)) as client:
        assert [client.get("jobs").json() for _ in range(2)] == [{"n": 0}, {"n": 2}]  # type: ignore[union-attr]
