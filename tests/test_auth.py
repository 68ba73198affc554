"""Resource permission checks: RabbitMQ's regular expressions, cached per users-file version,
and a change made by another process (the CLI) applies within CHECK_FRESH_S."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import auth
from tidings.auth import UserStore
from tidings.errors import AccessRefusedError


def test_checks_follow_the_patterns_and_a_cli_change_applies_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    cli = UserStore(tmp_path)  # another process: the `tidings users` command
    cli.add_user("alice", "pw")
    cli.set_permissions("alice", "/", "^alice-.*", "^alice-.*", "^alice-.*")
    server = UserStore(tmp_path)

    server.check("alice", "/", "write", "exchange", "alice-events")
    server.check("alice", "/", "configure", "queue", "amq.gen-xyz")  # server-named: hers
    with pytest.raises(AccessRefusedError, match="write access to exchange 'bob-events'"):
        server.check("alice", "/", "write", "exchange", "bob-events")
    with pytest.raises(AccessRefusedError):
        server.check("alice", "/", "write", "exchange", "alice")  # fullmatch, not search

    cli.set_permissions("alice", "/", "^alice-.*", "^$", "^alice-.*")
    clock[0] += auth.CHECK_FRESH_S / 2
    server.check("alice", "/", "write", "exchange", "alice-events")  # not looked at yet
    clock[0] += auth.CHECK_FRESH_S
    with pytest.raises(AccessRefusedError, match="refused for user 'alice'"):
        server.check("alice", "/", "write", "exchange", "alice-events")
    server.check("alice", "/", "read", "queue", "alice-jobs")
