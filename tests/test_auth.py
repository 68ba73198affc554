"""Resource permission checks: RabbitMQ's regular expressions, cached per users-file version,
and a change made by another process (the CLI) applies within CHECK_FRESH_S."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tidings import auth
from tidings.auth import UserStore
from tidings.errors import AccessRefusedError, ConfigError


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
    with pytest.raises(AccessRefusedError):  # server-named queues are checked like any other
        server.check("alice", "/", "configure", "queue", "amq.gen-xyz")
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


# -- logins: nothing remembered of failures, hashing off the loop, guessers slowed ---------

async def test_failed_logins_leave_nothing_behind_and_long_passwords_are_not_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = UserStore(tmp_path)
    hashed: list[str] = []
    real = auth.check_password
    monkeypatch.setattr(auth, "check_password", lambda p, s: hashed.append(p) or real(p, s))
    for i in range(20):
        with pytest.raises(AccessRefusedError):
            await users.authenticate_async("guest", f"wrong-{i}", f"10.0.0.{i}")
    with pytest.raises(AccessRefusedError):
        await users.authenticate_async("guest", "x" * 120_000, "10.0.1.1")
    assert len(hashed) == 20  # the 120 KB password was refused before any hashing
    assert users._logins == {}
    assert await users.authenticate_async("guest", "guest", "127.0.0.1") == "guest"
    assert await users.authenticate_async("guest", "guest", "127.0.0.1") == "guest"
    assert len(hashed) == 21  # a good login is remembered (by a keyed hash), not rehashed
    [(name, digest)] = users._logins
    assert name == "guest" and len(digest) == 32 and b"guest" not in digest


async def test_hashing_runs_off_the_event_loop_and_for_unknown_users_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = UserStore(tmp_path)
    threads: list[str] = []
    real = auth.check_password
    monkeypatch.setattr(auth, "check_password", lambda p, s: threads.append(
        threading.current_thread().name) or real(p, s))
    with pytest.raises(AccessRefusedError):
        await users.authenticate_async("nobody", "guess", "127.0.0.1")
    with pytest.raises(AccessRefusedError):
        await users.authenticate_async("guest", "guess", "127.0.0.1")
    assert len(threads) == 2  # an unknown name costs a hash too: timing does not tell
    assert threading.main_thread().name not in threads


async def test_a_peer_whose_logins_keep_failing_is_answered_later_and_later(
    tmp_path: Path,
) -> None:
    users = UserStore(tmp_path)
    for _ in range(4):
        with pytest.raises(AccessRefusedError):
            users.authenticate("guest", "wrong", "192.0.2.7")
    assert users._failure_delay("guest\x00192.0.2.7") == pytest.approx(0.8)
    assert users._failure_delay("guest\x00192.0.2.8") == 0.0  # other peers are not slowed
    for _ in range(10):
        with pytest.raises(AccessRefusedError):
            users.authenticate("guest", "wrong", "192.0.2.7")
    assert users._failure_delay("guest\x00192.0.2.7") == auth.FAILURE_DELAY_MAX_S
    assert users.authenticate("guest", "guest", "127.0.0.1") == "guest"
    assert users._failure_delay("guest\x00127.0.0.1") == 0.0


async def test_failed_logins_for_one_user_do_not_delay_another_from_that_address(
    tmp_path: Path,
) -> None:
    """An attacker guessing alice's password (or inventing users) from an address slows
    those attempts down, not bob's correct login from the same address (it waited 5 s)."""
    import time

    users = UserStore(tmp_path)
    users.add_user("alice", "alice-pw")
    users.add_user("bob", "bob-pw")
    for name in ["alice"] * 8 + ["nobody", "nobody-else"] * 4:
        with pytest.raises(AccessRefusedError):
            users.authenticate(name, "guess", "192.0.2.9")
    started = time.monotonic()
    assert await users.authenticate_async("bob", "bob-pw", "192.0.2.9") == "bob"
    assert time.monotonic() - started < 1.0
    assert users._failure_delay("alice\x00192.0.2.9") == auth.FAILURE_DELAY_MAX_S
    assert users._failure_delay("\x00192.0.2.9") > 0  # unknown names share one delay


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "md5"])
def test_rabbitmq_password_hashes_are_checked_as_rabbitmq_makes_them(algorithm: str) -> None:
    import base64
    import hashlib

    from tidings.auth import check_password, exported_hash, imported_hash

    salt = b"\x90\x01\xfe\x22"
    made = base64.b64encode(salt + hashlib.new(algorithm, salt + b"pa55").digest()).decode()
    name = f"rabbit_password_hashing_{algorithm}"
    stored = imported_hash(made, name)
    assert check_password("pa55", stored) and not check_password("pa56", stored)
    assert exported_hash(stored) == (made, name)
    assert imported_hash("", name) == ""  # RabbitMQ's "no password login"
    assert not check_password("", "")
    for bad, algo in [("not base64!", name), (base64.b64encode(b"short").decode(), name),
                      (made, "rabbit_password_hashing_bcrypt")]:
        with pytest.raises(ConfigError):
            imported_hash(bad, algo)
