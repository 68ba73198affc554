"""The gateway's access log and the audit log: one line per request (JSON or the common log
format) with user, vhost, method, path, status, bytes and duration, refused requests
included, never a credential or a body; one audit record per change of users, permissions,
policies, ... through the HTTP API and the CLI; files rotate by size."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tidings import logs

from ..serverproc import ServerProcess

PASSWORD = "s3cret-Pa55word"


def test_requests_are_logged_and_changes_audited(tmp_path: Path) -> None:
    access, audit = tmp_path / "access.log", tmp_path / "audit.log"
    server = ServerProcess(tmp_path / "data", "--access-log", str(access),
                           "--audit-log", str(audit)).start()
    try:
        base = f"http://127.0.0.1:{server.http_port}"
        with httpx.Client(base_url=base, auth=("guest", "guest")) as api:
            assert api.get("/api/overview").status_code == 200
            assert api.put("/api/users/bob", json={"password": PASSWORD,
                                                   "tags": ""}).status_code in (201, 204)
            assert api.put("/api/permissions/%2F/bob", json={
                "configure": ".*", "write": ".*", "read": ".*"}).status_code in (201, 204)
            assert api.put("/api/policies/%2F/short", json={
                "pattern": "^tmp", "definition": {"message-ttl": 1000}}).status_code in (201,
                                                                                        204)
            assert api.get("/api/queues/%2F").status_code == 200
        with httpx.Client(base_url=base, auth=("bob", "wrong")) as api:
            assert api.get("/api/overview").status_code == 401
    finally:
        server.stop()
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"]) for r in lines] == [
        ("GET", "/api/overview", 200), ("PUT", "/api/users/bob", lines[1]["status"]),
        ("PUT", "/api/permissions/%2F/bob", lines[2]["status"]),
        ("PUT", "/api/policies/%2F/short", lines[3]["status"]), ("GET", "/api/queues/%2F", 200),
        ("GET", "/api/overview", 401)]
    assert lines[0]["user"] == "guest" and lines[-1]["user"] == "-"
    assert lines[3]["vhost"] == "/" and lines[0]["client"] == "127.0.0.1"
    assert all(r["bytes"] >= 0 and r["duration_ms"] >= 0 and r["time"].endswith("Z")
               for r in lines)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["who"], r["face"], r["action"], r["target"]) for r in records] == [
        ("guest", "http", "PUT user", "/api/users/bob"),
        ("guest", "http", "PUT permission", "/api/permissions/%2F/bob"),
        ("guest", "http", "PUT policy", "/api/policies/%2F/short")]
    for text in (access.read_text(), audit.read_text()):
        assert PASSWORD not in text and "Basic " not in text and "guest:guest" not in text


def test_the_common_log_format_and_the_cli_audited(tmp_path: Path) -> None:
    access, audit = tmp_path / "access.log", tmp_path / "audit.log"
    data = tmp_path / "data"
    server = ServerProcess(data, "--access-log", str(access), "--access-log-format",
                           "common").start()
    try:
        httpx.get(f"http://127.0.0.1:{server.http_port}/api/overview", auth=("guest", "guest"))
    finally:
        server.stop()
    (line,) = access.read_text().splitlines()
    assert re.fullmatch(r'127\.0\.0\.1 - guest \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                        r'"GET /api/overview HTTP/1\.1" 200 \d+ [\d.]+', line), line
    env = {**os.environ, "TIDINGS_AUDIT_LOG": str(audit)}
    for args in (["users", "add", "carol", PASSWORD],
                 ["policies", "set", "p", "^x", '{"max-length": 5}']):
        out = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), *args],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["face"], r["action"]) for r in records] == [("cli", "users add"),
                                                           ("cli", "PUT policy")]
    assert records[0]["who"].startswith("cli:") and records[0]["target"] == "carol"
    assert PASSWORD not in audit.read_text()


def test_a_log_file_rotates_by_size(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    logs.configure(logs.AUDIT, str(target), max_bytes=2_000, backups=2)
    try:
        for i in range(100):
            logs.audit("ops", "cli", "users add", f"user-{i}")
    finally:
        logs.configure(logs.AUDIT, None)
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(len(p.read_bytes()) <= 2_000 for p in tmp_path.iterdir())
    assert "user-99" in target.read_text()
    assert not logging.getLogger("tidings.audit").handlers
