"""The tidings command, run as a real process: output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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
    assert out.stdout.split()[:7] == ["vhost", "queue", "ready", "unacked", "delayed",
                                      "consumers", "oldest_s"]
    lines = {line.split()[1]: line.split()[2:] for line in out.stdout.splitlines()[1:]}
    assert lines["jobs"][:4] == ["1", "0", "0", "0"] and lines["jobs.dead"][:2] == ["1", "0"]
    out = run("--data-dir", str(tmp_path), "queues", "--json")
    assert {q["name"]: q["ready"] for q in json.loads(out.stdout)} == {"jobs": 1, "jobs.dead": 1}
    out = run("--data-dir", str(tmp_path), "stats", "--queue", "jobs")
    assert out.returncode == 0 and '"ready": 1' in out.stdout
    out = run("--data-dir", str(tmp_path), "dead-letters", "jobs")
    assert "rejected" in out.stdout
    out = run("--data-dir", str(tmp_path), "dead-letters", "jobs", "--replay")
    assert out.stdout.strip() == "replayed 1"
    out = run("--data-dir", str(tmp_path), "stats", "--queue", "nope")
    assert out.returncode == 1
    assert out.stderr.strip() == "tidings: error: no queue 'nope' in vhost '/'"


def test_serve_bad_flag_value_is_one_line_exit_2() -> None:
    out = run("serve", "--amqp-port", "not-a-port")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--amqp-port" in out.stderr and "is not a port number" in out.stderr
    out = run("serve", "--http-port", "70000")
    assert out.returncode == 2 and "port 70000 is out of range" in out.stderr
    out = run("serve", "--kafka-port", "0", "--kafka-message-max-bytes", "0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--kafka-message-max-bytes 0: 1 to --max-message-bytes" in out.stderr
    out = run("serve", "--kafka-port", "0", "--kafka-max-partitions", "0")
    assert out.returncode == 2 and "--kafka-max-partitions 0" in out.stderr
    out = run("serve", "--kafka-port", "0", "--kafka-max-partitions", "0",
              "--max-message-bytes", "1000")  # Kafka's default batch limit yields to it
    assert out.returncode == 2 and "--kafka-message-max-bytes" not in out.stderr
    for flags, said in ((("--kafka-tls-port", "0"), "--kafka-tls-port needs --tls-cert"),
                        (("--kafka-group-min-session-timeout-ms", "0"), "1 <= min <= max"),
                        (("--kafka-group-max-session-timeout-ms", "10"), "1 <= min <= max"),
                        (("--kafka-group-initial-rebalance-delay-ms", "-1"), "at least 0"),
                        (("--kafka-queued-max-request-bytes", "0"), "at least 1"),
                        (("--kafka-connections-max-idle-ms", "0"), "at least 1")):
        out = run("serve", "--kafka-port", "0", *flags)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and said in out.stderr, \
            out.stderr


def test_serve_loop_choice() -> None:
    """--loop picks the event loop; asking for uvloop where it is missing says how to get it."""
    from tidings.cli_serve import loop_factory

    assert loop_factory("asyncio") is None
    out = run("serve", "--loop", "libuv")
    assert out.returncode == 2 and "--loop" in out.stderr and out.stderr.count("\n") == 1
    try:
        import uvloop
    except ImportError:
        assert loop_factory("auto") is None
        out = run("--data-dir", "/nonexistent/never", "serve", "--loop", "uvloop",
                  "--amqp-port", "0", "--http-port", "-1")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "pip install 'tidings[uvloop]'" in out.stderr
    else:
        assert loop_factory("auto") is uvloop.new_event_loop
        assert loop_factory("uvloop") is uvloop.new_event_loop


def test_serve_settles_the_garbage_collector_once_it_is_up() -> None:
    """Start-up objects are frozen out of the collector's walks; young ones are collected
    less often (restored afterwards: this is the test process's collector)."""
    import gc

    from tidings.cli_serve import GC_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 1000 and gc.get_threshold()[0] == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_stats_and_dead_letters_ask_the_server_holding_the_directory(
    tmp_path: Path,
) -> None:
    """They refused while a server ran (the directory was locked); now they ask its API."""
    from tests.serverproc import ServerProcess

    data = tmp_path / "data"
    with tidings.connect_blocking(str(data)) as client:
        client.send("jobs", {"n": 1})
        m = client.get("jobs")
        assert m is not None
        m.reject()
    server = ServerProcess(data).start()
    try:
        _wait_for_control(data)
        out = run("--data-dir", str(data), "stats")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["queue_totals"]["messages_ready"] == 1  # jobs.dead
        out = run("--data-dir", str(data), "dead-letters", "jobs")
        assert out.returncode == 0 and "rejected" in out.stdout, out.stderr
        assert run("--data-dir", str(data), "dead-letters", "jobs", "--replay"
                   ).stdout.strip() == "replayed 1"
        out = run("--data-dir", str(data), "stats", "--queue", "jobs")
        assert json.loads(out.stdout)["ready"] == 1
    finally:
        server.stop()


def _wait_for_control(data: Path) -> None:
    for _ in range(100):  # written just after the HTTP listener starts
        if (data / "control.json").exists():
            return
        time.sleep(0.05)


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
    ready = {line.split()[1]: line.split()[2] for line in out.stdout.splitlines()[1:]}
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


def test_first_contact(tmp_path: Path) -> None:
    """What a newcomer meets: help on a bare command, --data-dir after the command, defaults
    in every flag's help, any case for --log-level, one line for every failure."""
    out = run()
    assert out.returncode == 0 and "usage: tidings" in out.stdout and "serve" in out.stdout
    out = run("serve", "--help")
    assert out.returncode == 0 and "(default: 5672)" in out.stdout
    assert "(default: INFO)" in out.stdout
    data = tmp_path / "data"
    with tidings.connect_blocking(str(data)) as client:
        client.send("jobs", {"n": 1})
    out = run("queues", "--data-dir", str(data))  # the flag after the command
    assert out.returncode == 0 and "jobs" in out.stdout
    out = run("dead-letters", "nope", "--data-dir", str(data))
    assert out.returncode == 1 and out.stderr == "tidings: error: no queue 'nope' in vhost '/'\n"
    assert "nope" not in run("queues", "--data-dir", str(data)).stdout  # nothing was made
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    for args in (("serve", "--data-dir", str(not_a_dir), "--amqp-port", "0",
                  "--http-port", "-1", "--log-level", "warning"),
                 ("users", "add", "bob", "--data-dir", str(not_a_dir / "x"))):
        out = run(*args)
        assert out.returncode == 1, out
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    added = subprocess.run([sys.executable, "-m", "tidings", "--data-dir", str(data), "users",
                            "add", "carol"], input="s3cret\n", capture_output=True, text=True,
                           timeout=60, check=False)  # no terminal: the password from stdin
    assert added.returncode == 0, added.stderr
    from tidings.auth import UserStore

    assert UserStore(data).authenticate("carol", "s3cret", "127.0.0.1") == "carol"
    piped = subprocess.run(f"'{sys.executable}' -m tidings --data-dir '{data}' stats | head -1",
                           shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert piped.stdout.strip() == "{" and "Traceback" not in piped.stderr


def test_the_banner_prints_urls_to_paste(tmp_path: Path) -> None:
    from tests.serverproc import ServerProcess

    server = ServerProcess(tmp_path / "data").start()
    try:
        banner = "".join(server.banner)
        assert f"amqp://guest:guest@127.0.0.1:{server.port}/" in banner
        assert f"http://127.0.0.1:{server.http_port}/" in banner
    finally:
        server.stop()


def test_the_cli_operates_a_running_server_and_a_stopped_directory(tmp_path: Path) -> None:
    """As rabbitmqctl against a live node: list, publish, purge, delete, export and import
    definitions, through the running server's API when one holds the directory."""
    from tests.serverproc import ServerProcess

    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        for _ in range(100):  # written just after the HTTP listener starts
            if (data / "control.json").exists():
                break
            time.sleep(0.05)
        assert oct((data / "control.json").stat().st_mode & 0o777) == "0o600"
        with httpx_client(server) as http:
            http.put("/api/queues/%2F/jobs", json={"arguments": {"x-max-length": 5}})
            http.put("/api/exchanges/%2F/orders", json={"type": "topic"})
            http.post("/api/bindings/%2F", json={"source": "orders", "destination": "jobs",
                                                 "routing_key": "orders.#"})
        assert run("--data-dir", str(data), "publish", "jobs", "hello").returncode == 0
        out = run("--data-dir", str(data), "queues", "--json")
        assert out.returncode == 0, out.stderr
        assert {q["name"]: q["ready"] for q in json.loads(out.stdout)}["jobs"] == 1
        out = run("--data-dir", str(data), "connections")
        assert out.returncode == 0 and out.stdout.split()[:3] == ["name", "user", "vhost"]
        assert "orders" in run("--data-dir", str(data), "exchanges").stdout
        assert "orders.#" in run("--data-dir", str(data), "bindings").stdout
        out = run("--data-dir", str(data), "delete", "queue", "jobs", "--if-empty")
        assert out.returncode == 1 and "not empty" in out.stderr
        assert json.loads(run("--data-dir", str(data), "purge", "jobs", "--json").stdout) == \
            {"purged": 1}
        exported = tmp_path / "defs.json"
        out = run("--data-dir", str(data), "definitions", "export", str(exported))
        assert out.returncode == 0, out.stderr
        defs = json.loads(exported.read_text())
        # (and the gateway's event history, a stream: exported like any durable queue)
        assert {q["name"] for q in defs["queues"]} == {"jobs", "tidings.events.log"}
        assert "orders" in [e["name"] for e in defs["exchanges"]]
        out = run("--data-dir", str(data), "publish", "nope", "x")
        assert out.returncode == 1 and "no queue 'nope'" in out.stderr
        assert run("--data-dir", str(data), "delete", "queue", "jobs").returncode == 0
    finally:
        server.stop()
    assert not (data / "control.json").exists()
    fresh = tmp_path / "fresh"  # no server: the same commands open the directory
    out = run("--data-dir", str(fresh), "definitions", "import", str(exported), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["imported"]["queues"] == 2  # jobs and the event history
    assert run("--data-dir", str(fresh), "publish", "jobs", "offline").returncode == 0
    out = run("--data-dir", str(fresh), "queues")
    assert out.stdout.splitlines()[1].split()[1:3] == ["jobs", "1"]
    assert "orders.#" in run("--data-dir", str(fresh), "bindings").stdout


def httpx_client(server: object) -> Any:
    import httpx

    return httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",  # type: ignore[attr-defined]
                        auth=("guest", "guest"), timeout=10)


def test_the_quarantine_of_a_running_server_is_listed_and_exported(tmp_path: Path) -> None:
    import struct

    from tests.serverproc import ServerProcess
    from tidings.storage import SqliteStore

    data = tmp_path / "data"
    with tidings.connect_blocking(str(data)) as client:
        client.send("jobs", {"n": 1})
    store = SqliteStore(data)
    seq = store.load("/\x1fjobs", -1, 10)[0][0]
    meta = b'{"k":"jobs","t0":1,"h":{"$b":"!"}}'
    store.replace("/\x1fjobs", seq, b"\x00" + struct.pack(">I", len(meta)) + meta)
    store.close()
    server = ServerProcess(data).start()  # recovery moves the record aside
    try:
        for _ in range(100):
            if (data / "control.json").exists():
                break
            time.sleep(0.05)
        out = run("--data-dir", str(data), "quarantine")
        assert out.returncode == 0, out.stderr
        [row] = out.stdout.splitlines()[1:]
        assert row.split()[:3] == [str(seq), "/", "jobs"]
        out = run("--data-dir", str(data), "quarantine", "--export", str(tmp_path / "q"))
        assert out.returncode == 0, out.stderr
        [entry] = json.loads((tmp_path / "q" / "index.json").read_text())
        assert (tmp_path / "q" / entry["file"]).read_bytes()[5:] == meta
        out = run("--data-dir", str(data), "quarantine", "--drop")
        assert out.returncode == 1 and "server stopped" in out.stderr
        with httpx_client(server) as http:
            assert http.get("/api/quarantine").status_code == 200
    finally:
        server.stop()


async def test_serve_on_a_directory_an_application_holds_says_what_to_do(
        tmp_path: Path) -> None:
    async with tidings.connect(str(tmp_path / "data")):
        out = run("--data-dir", str(tmp_path / "data"), "serve", "--amqp-port", "0",
                  "--http-port", "-1")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert f"in use by process {os.getpid()}" in out.stderr
    assert "start tidings serve first, and the application joins it" in out.stderr


def test_a_data_directory_it_may_not_read_is_one_line(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    """Another user's data directory (its control file unreadable): one line, not an
    UnboundLocalError traceback. (Permissions do not bind root, so the refusal is made.)"""
    from tidings import cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "control.json").write_text('{"pid": 1, "url": "http://127.0.0.1:1", "token": "t"}')
    real = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "control.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    for command in (["exchanges"], ["purge", "q"], ["definitions", "export"]):
        assert cli.main(["--data-dir", str(data), *command]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "permission denied" in err, err
        assert "Traceback" not in err


def test_set_password_replaces_the_hash_and_gives_scram_keys(tmp_path: Path) -> None:
    """An old user (made before SCRAM keys were kept) gets them with its new password; the
    old password stops working."""
    import json

    import pytest

    from tidings.auth import UserStore
    from tidings.errors import AccessRefusedError

    data = tmp_path / "data"
    assert run("--data-dir", str(data), "users", "add", "dave", "old-pw").returncode == 0
    users_file = data / "users.json"
    content = json.loads(users_file.read_text())
    del content["users"]["dave"]["scram"]  # as a users file of an earlier tidings
    users_file.write_text(json.dumps(content))
    assert UserStore(data).scram_credentials("dave", "SCRAM-SHA-256") is None
    out = run("--data-dir", str(data), "users", "set-password", "dave", "new-pw")
    assert out.returncode == 0, out.stderr
    store = UserStore(data)
    assert store.scram_credentials("dave", "SCRAM-SHA-512") is not None
    assert store.authenticate("dave", "new-pw", "127.0.0.1") == "dave"
    with pytest.raises(AccessRefusedError):
        store.authenticate("dave", "old-pw", "127.0.0.1")
    assert "new-pw" not in users_file.read_text()
    out = run("--data-dir", str(data), "users", "set-password", "nobody", "x")
    assert out.returncode == 1 and out.stderr.strip() == "tidings: error: no user 'nobody'"


async def test_connections_without_a_server_says_so(tmp_path: Path) -> None:
    """Connections exist only in a running server: with none, one line saying so and exit 1
    (it printed an empty table, as if the server had no clients)."""
    data = tmp_path / "data"
    async with tidings.connect(str(data)):  # a data directory, and no server on it
        pass
    out = run("--data-dir", str(data), "connections")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no server is running" in out.stderr


def test_every_flag_has_help_and_says_its_default_once() -> None:
    """One help convention: every argument of every command explains itself, and a default
    is shown once (the formatter adds '(default: X)'; a help text that says it too was
    shown twice)."""
    import argparse

    from tidings.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        problems = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    problems += walk(sub, f"{path} {name}")
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{path} {name}: no help")
            elif "default" in action.help.lower() and "%(default)" not in action.help and \
                    action.default not in (None, argparse.SUPPRESS, False):
                problems.append(f"{path} {name}: its default is said twice")
        return problems

    assert walk(build_parser(), "tidings") == []


def test_the_cli_declares_gets_binds_sets_policies_and_closes_like_rabbitmqadmin(
        tmp_path: Path) -> None:
    import pika

    from tests.serverproc import ServerProcess

    data = tmp_path / "data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run("--data-dir", str(data), *args)

    data.mkdir()
    pinged = cli("ping")
    assert pinged.returncode == 1 and "no server is running" in pinged.stderr
    for args in (("declare", "queue", "jobs", "--arg", "x-max-length=10"),
                 ("declare", "exchange", "orders", "--type", "topic"),
                 ("declare", "binding", "orders", "jobs", "--routing-key", "order.*"),
                 ("publish", "order.new", "first", "--exchange", "orders"),
                 ("policies", "set", "cap", "^jobs$", '{"max-length": 1}', "--priority", "2")):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert cli("queues", "--json").stdout.count('"name": "jobs"') == 1
    server = ServerProcess(data).start()  # the same commands, now through the server
    try:
        _wait_for_control(data)
        assert cli("ping").stdout.strip() == "pong"
        status = cli("status").stdout
        assert "tidings@" in status and "alarms" in status
        assert cli("publish", "order.new", "second", "--exchange", "orders").returncode == 0
        [got] = json.loads(cli("get", "jobs", "--count", "5", "--json").stdout)
        assert got["payload"] == "second"  # the policy's max-length 1 dropped the first
        assert json.loads(cli("get", "jobs", "--ack", "--json").stdout)[0]["payload"] == "second"
        assert cli("get", "jobs").stdout.strip() == "queue 'jobs' is empty"
        policies = json.loads(cli("policies", "list", "--json").stdout)
        assert [(p["name"], p["priority"]) for p in policies] == [("cap", 2)]
        warned = cli("policies", "set", "ha", "^x$", '{"ha-mode": "all"}')
        assert warned.returncode == 0 and "no effect" in warned.stderr
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", server.port, client_properties={"connection_name": "cli-watched"}))
        ch = conn.channel()
        ch.basic_consume("jobs", lambda *a: None)
        table = cli("connections").stdout
        assert "cli-watched" in table and table.split()[:3] == ["name", "user", "vhost"]
        [row] = json.loads(cli("connections", "--json").stdout)
        assert "jobs" in cli("consumers").stdout and cli("channels").stdout.count("\n") == 2
        empty = cli("close", "")
        assert empty.returncode == 1 and "name the connection" in empty.stderr  # was HTTP 307
        assert cli("close", row["name"], "--reason", "maintenance").returncode == 0
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            conn.process_data_events(time_limit=2)
        assert cli("delete", "binding", "orders", "jobs", "--routing-key", "order.*"
                   ).returncode == 0
        assert "order.*" not in cli("bindings").stdout
        assert cli("users", "passwd", "guest", "new-pw").returncode == 0
        assert cli("policies", "delete", "cap").returncode == 0
        assert cli("delete", "exchange", "orders").returncode == 0
    finally:
        server.stop()
