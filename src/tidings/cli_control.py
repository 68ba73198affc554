"""``tidings connections|exchanges|bindings|purge|delete|publish|definitions``: operate a broker.

As ``rabbitmqctl`` does against a live node: when a ``tidings serve`` holds the data directory,
the command goes to it over its HTTP API, as the local operator (the token in the directory's
owner-only ``control.json``); when none does, it opens the directory itself. The same command
works either way, and ``--json`` prints what a script wants.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tidings.errors import BrokenResourceError, ConfigError, NotFoundError

CONTROL_FILE = "control.json"
COMMANDS = ("connections", "exchanges", "bindings", "purge", "delete", "publish",
            "definitions")


def add_control_parsers(commands: Any) -> None:
    for name, help_ in (("connections", "list open AMQP connections (of a running server)"),
                        ("exchanges", "list exchanges"), ("bindings", "list bindings")):
        p = commands.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true", help="one JSON array")
    for name, help_ in (("purge", "drop a queue's ready messages"),
                        ("delete", "delete a queue")):
        p = commands.add_parser(name, help=help_)
        p.add_argument("queue")
        p.add_argument("--vhost", default="/")
        if name == "delete":
            p.add_argument("--if-empty", action="store_true")
            p.add_argument("--if-unused", action="store_true")
    p = commands.add_parser("publish", help="send one message to a queue (a test message)")
    p.add_argument("queue")
    p.add_argument("body", help="the message body (text)")
    p.add_argument("--vhost", default="/")
    p = commands.add_parser("definitions", help="export or import exchanges, queues, "
                                                "bindings and vhosts (RabbitMQ's format)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("export", help="print them as JSON").add_argument(
        "file", nargs="?", default="-", help="file to write ('-': standard output)")
    sub.add_parser("import", help="declare what a file lists").add_argument("file")


class Remote:
    """The running server, over its HTTP API."""

    def __init__(self, control: dict[str, Any]) -> None:
        self.url, self.token = control["url"], control["token"]
        # the server's certificate names its public host, not 127.0.0.1: the token is secret
        # and local, so the local hop is not verified
        self.tls = ssl._create_unverified_context() if self.url.startswith("https") else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.tls) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("message", str(e))
            except ValueError:
                message = str(e)
            raise (NotFoundError if e.code == 404 else ConfigError)(message) from e
        except OSError as e:
            raise ConfigError(f"the server in this data directory does not answer at "
                              f"{self.url}: {e}") from e

    def queue_path(self, vhost: str, queue: str, rest: str = "") -> str:
        return f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}{rest}"


def find_server(data_dir: str) -> Remote | None:
    """The server holding ``data_dir``, if one runs (its control file names a live process)."""
    path = Path(data_dir) / CONTROL_FILE
    try:
        control = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except PermissionError:
        raise ConfigError(f"cannot read '{path}': permission denied (run this as the user "
                          f"that owns the data directory)") from None
    try:
        os.kill(int(control["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return None
    except PermissionError:
        pass  # alive, another user's: its file was readable, so it is ours to use
    return Remote(control)


async def run_control_command(args: argparse.Namespace) -> int:
    remote = find_server(args.data_dir)
    result = _remote(remote, args) if remote is not None else await _local(args)
    _print(args, result)
    return 0


def _remote(r: Remote, args: argparse.Namespace) -> Any:
    c = args.command
    if c in ("connections", "exchanges", "bindings"):
        return r.call("GET", f"/api/{c}")
    if c == "purge":
        return r.call("DELETE", r.queue_path(args.vhost, args.queue, "/contents"))
    if c == "delete":
        flags = "&".join(f for f, on in (("if_empty=true", args.if_empty),
                                          ("if_unused=true", args.if_unused)) if on)
        return r.call("DELETE", r.queue_path(args.vhost, args.queue) + (f"?{flags}" * bool(flags)))
    if c == "publish":
        r.call("GET", r.queue_path(args.vhost, args.queue))  # a missing queue is an error
        return r.call("POST", r.queue_path(args.vhost, args.queue, "/messages"),
                      {"body": args.body})
    if args.action == "export":
        return r.call("GET", "/api/definitions")
    return r.call("POST", "/api/definitions", _read_definitions(args.file))


async def _local(args: argparse.Namespace) -> Any:
    """No server runs: open the data directory (recovering it) and act on the broker."""
    from tidings.auth import UserStore
    from tidings.message import Message
    from tidings.routing.broker import Broker
    from tidings.routing.definitions_io import export_definitions, import_definitions
    from tidings.storage.sqlite import SqliteStore

    c = args.command
    if c == "connections":  # they exist only in a running server, which was not found
        raise BrokenResourceError(
            f"no server is running on {args.data_dir}: connections are listed from a running "
            f"'tidings serve --data-dir {args.data_dir}'")
    broker = Broker(SqliteStore(args.data_dir))

    def act() -> Any:
        if c == "exchanges":
            return [{"vhost": e.vhost, "name": e.name, "type": e.kind, "durable": e.durable}
                    for v in broker.vhost_names() for e in broker.list_exchanges(v)]
        if c == "bindings":
            return [{"vhost": b.vhost, "source": b.source, "destination": b.destination,
                     "destination_type": "exchange" if b.to_exchange else "queue",
                     "routing_key": b.routing_key}
                    for v in broker.vhost_names() for b in broker.list_bindings(v)]
        if c == "purge":
            return {"purged": broker.purge_queue(args.vhost, args.queue)}
        if c == "delete":
            count = broker.delete_queue(args.vhost, args.queue, if_empty=args.if_empty,
                                        if_unused=args.if_unused)
            return {"deleted": args.queue, "messages": count}
        if c == "publish":
            broker.describe_queue(args.vhost, args.queue)  # NotFoundError if missing
            broker.publish(args.vhost, "", Message(args.body.encode(), args.queue,
                                                   content_type="text/plain"))
            return {"queue": args.queue}
        if args.action == "export":
            return export_definitions(broker, users=UserStore(args.data_dir))
        users = UserStore(args.data_dir)
        return import_definitions(broker, _read_definitions(args.file), users.list_vhosts(),
                                  users)

    try:
        result = act()
        await broker.sync()
        return result
    finally:
        broker.close()


def _read_definitions(file: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read definitions from '{file}': {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"'{file}' is not a definitions object")
    return data


def _print(args: argparse.Namespace, result: Any) -> None:
    c = args.command
    if c == "definitions" and args.action == "export":
        text = json.dumps(result, indent=2)
        if args.file == "-":
            print(text)
        else:
            Path(args.file).write_text(text + "\n")
        return
    if isinstance(result, list) and not getattr(args, "json", False):
        columns = {"connections": ("peer", "user", "vhost", "client", "channels", "consumers",
                                   "blocked"),
                   "exchanges": ("vhost", "name", "type", "durable"),
                   "bindings": ("vhost", "source", "destination", "destination_type",
                                "routing_key")}[c]
        print("\t".join(columns))
        for row in result:
            print("\t".join(str(row.get(k, "")) for k in columns))
        return
    print(json.dumps(result, indent=2 if isinstance(result, list) else None))

