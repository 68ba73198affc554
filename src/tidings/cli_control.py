"""The ``tidings`` commands that operate a broker, as ``rabbitmqctl`` and ``rabbitmqadmin``
together: list, declare, delete, purge, publish, get, close, status, ping, policies, stats,
dead letters and definitions.

Every command is a request to the management API. When a ``tidings serve`` holds the data
directory the request goes to it over HTTP, as the local operator (the token in the
directory's owner-only ``control.json``); when none does, the same request is answered by the
same API in this process, over the directory opened here (:class:`InProcess`). So a command
behaves alike either way, and what the API refuses (a 404, a 406) is refused alike. Output:
aligned columns or a short line for people, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

from tidings.errors import BrokenResourceError, ConfigError, NotFoundError, TidingsError

CONTROL_FILE = "control.json"
#: Commands that need a running server (connections exist only in one).
LIVE_ONLY = ("connections", "channels", "consumers", "close", "status", "ping")
COMMANDS = ("queues", "streams", "exchanges", "bindings", "policies", "declare", "delete",
            "purge", "publish", "get", "stats", "dead-letters", "definitions", "machines",
            *LIVE_ONLY)


# -- the parsers -------------------------------------------------------------------------------


def _parser(parent: Any, name: str, help_: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return p


def _vhost(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vhost", default="/", help="virtual host")


def _named(parent: Any, kind: str, help_: str) -> argparse.ArgumentParser:
    p = _parser(parent, kind, help_)
    p.add_argument("name", help=f"{kind} name")
    _vhost(p)
    return p


def add_control_parsers(commands: Any) -> None:
    for name, help_ in (("queues", "list queues: depth, consumers, oldest message's age"),
                        ("streams", "list streams: records, size, offsets, readers' lag"),
                        ("exchanges", "list exchanges"), ("bindings", "list bindings"),
                        ("connections", "list AMQP connections (of a running server)"),
                        ("channels", "list AMQP channels (of a running server)"),
                        ("consumers", "list AMQP consumers (of a running server)")):
        _parser(commands, name, help_)
    _add_topology_parsers(commands)
    _add_message_parsers(commands)
    _add_operator_parsers(commands)


def _add_topology_parsers(commands: Any) -> None:
    declare = commands.add_parser("declare", help="declare a queue, exchange or binding")
    what = declare.add_subparsers(dest="kind", required=True)
    p = _named(what, "queue", "declare a queue")
    p.add_argument("--transient", action="store_true", help="not kept across restarts")
    p.add_argument("--auto-delete", action="store_true", help="deleted with its last consumer")
    p.add_argument("--type", choices=("classic", "quorum", "stream"), default="classic",
                   help="queue type (x-queue-type)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an x- argument (VALUE read as JSON when it parses: x-max-length=5)")
    p = _named(what, "exchange", "declare an exchange")
    p.add_argument("--type", default="direct",
                   help="direct, fanout, topic, headers or x-delayed-message")
    p.add_argument("--transient", action="store_true", help="not kept across restarts")
    p.add_argument("--auto-delete", action="store_true", help="deleted with its last binding")
    p.add_argument("--internal", action="store_true", help="only other exchanges publish to it")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument (alternate-exchange=name, ...)")
    delete = commands.add_parser("delete", help="delete a queue, exchange or binding")
    gone = delete.add_subparsers(dest="kind", required=True)
    p = _named(gone, "queue", "delete a queue (its messages with it)")
    p.add_argument("--if-empty", action="store_true", help="only if it has no messages")
    p.add_argument("--if-unused", action="store_true", help="only if it has no consumers")
    p = _named(gone, "exchange", "delete an exchange")
    p.add_argument("--if-unused", action="store_true", help="only if it has no bindings")
    for verb, parent in (("declare", what), ("delete", gone)):
        p = _parser(parent, "binding", f"{verb} a binding")
        p.add_argument("source", help="the exchange it routes from")
        p.add_argument("destination", help="the queue (or exchange) it routes to")
        _vhost(p)
        p.add_argument("--routing-key", default="", help="routing key or topic pattern")
        p.add_argument("--to-exchange", action="store_true",
                       help="the destination is an exchange")


def _add_message_parsers(commands: Any) -> None:
    p = _parser(commands, "purge", "drop a queue's ready messages")
    p.add_argument("queue", help="queue name")
    _vhost(p)
    p = _parser(commands, "publish",
                "publish one message (to a queue by name, or through --exchange)")
    p.add_argument("routing_key", metavar="ROUTING_KEY",
                   help="routing key (with the default exchange: the queue's name)")
    p.add_argument("body", help="the message body (text)")
    _vhost(p)
    p.add_argument("--exchange", help="exchange (default: the default exchange, which routes "
                                      "to the queue the routing key names)")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                   help="a header")
    p.add_argument("--content-type", default="text/plain", help="content type")
    p = _parser(commands, "get",
                "show messages from the head of a queue (left there unless --ack)")
    p.add_argument("queue", help="queue name")
    _vhost(p)
    p.add_argument("--count", type=int, default=1, help="how many")
    p.add_argument("--ack", action="store_true", help="take them out of the queue")
    p = _parser(commands, "close", "close an AMQP connection (320 CONNECTION_FORCED)")
    p.add_argument("connection", help="its name, as 'tidings connections' lists it")
    p.add_argument("--reason", default="closed by the operator",
                   help="the reason the client is told")


def _add_operator_parsers(commands: Any) -> None:
    _parser(commands, "status", "the running server: version, uptime, memory, alarms, totals")
    _parser(commands, "ping", "is a server running on the data directory and answering")
    policies = commands.add_parser("policies", help="list, set or delete policies")
    sub = policies.add_subparsers(dest="action")
    for name, help_ in (("list", "list policies"), ("set", "add or change a policy"),
                        ("delete", "delete a policy")):
        p = _parser(sub, name, help_)
        _vhost(p) if name != "list" else p.add_argument(
            "--vhost", help="only this virtual host (default: all)")
        p.add_argument("--operator", action="store_true",
                       help="operator policies (limits that cap what policies allow)")
        if name == "list":
            continue
        p.add_argument("name", help="policy name")
        if name == "set":
            p.add_argument("pattern", help="regular expression of the names it applies to")
            p.add_argument("definition",
                           help='JSON object, e.g. \'{"max-length": 1000, "message-ttl": 60000}\'')
            p.add_argument("--priority", type=int, default=0,
                           help="the highest applies where several match")
            p.add_argument("--apply-to", default="all",
                           choices=("all", "queues", "exchanges", "classic_queues",
                                    "quorum_queues", "streams"), help="what it applies to")
    p = _parser(commands, "machines", "state machines: instances per state, one machine's "
                                      "instances, or one instance")
    p.add_argument("name", nargs="?", help="a machine: its instances ('graph': draw the "
                                           "machine KEY names as MODULE:MACHINE)")
    p.add_argument("key", nargs="?", help="an instance of it: the whole instance")
    p.add_argument("--state", help="only instances in this state")
    p.add_argument("--svg", action="store_true", help="graph: SVG instead of Mermaid text")
    p.add_argument("--move-to", metavar="STATE",
                   help="move the instance KEY to STATE (an operator's fix; needs --reason)")
    p.add_argument("--reason", help="why it was moved (kept in the instance's audit)")
    _vhost(p)
    p = _parser(commands, "stats", "broker statistics (or one queue's) as JSON")
    p.add_argument("--queue", help="only this queue")
    _vhost(p)
    p = _parser(commands, "dead-letters", "list, replay or purge a queue's dead letters")
    p.add_argument("queue", help="queue name")
    _vhost(p)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true", help="move them back into the queue")
    action.add_argument("--purge", action="store_true", help="delete them")
    p = commands.add_parser("definitions", help="export or import definitions (RabbitMQ's "
                                                "format: users, vhosts, permissions, policies, "
                                                "exchanges, queues, bindings)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("export", help="write them as JSON").add_argument(
        "file", nargs="?", default="-", help="file to write ('-': standard output)")
    imp = _parser(sub, "import", "apply a file: all of it, or nothing when any entry is bad")
    imp.add_argument("file", help="file to read ('-': standard input)")


# -- the API, remote or in this process --------------------------------------------------------


class Api(Protocol):
    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Any: ...


def _refusal(status: int, raw: bytes) -> TidingsError:
    try:
        message = str(json.loads(raw).get("message") or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")[:200] or f"HTTP {status}"
    return (NotFoundError if status == 404 else ConfigError)(message)


class Remote:
    """The running server, over its HTTP API."""

    def __init__(self, control: dict[str, Any]) -> None:
        self.url, self.token = control["url"], control["token"]
        # the server's certificate names its public host, not 127.0.0.1: the token is secret
        # and local, so the local hop is not verified
        self.tls = ssl._create_unverified_context() if self.url.startswith("https") else None

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, body, headers or {})

    def _call(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.tls) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise _refusal(e.code, e.read()) from None
        except OSError as e:
            raise ConfigError(f"the server in this data directory does not answer at "
                              f"{self.url}: {e}") from e


class InProcess:
    """No server runs: the same API, answered here over the directory opened here."""

    def __init__(self, data_dir: str) -> None:
        from tidings.auth import UserStore
        from tidings.http.app import build_app
        from tidings.routing.broker import Broker
        from tidings.storage.sqlite import SqliteStore

        # the gateway's log lines (a policy's warnings) are this command's own output here
        gateway_log = logging.getLogger("tidings.http")
        gateway_log.addHandler(logging.NullHandler())
        gateway_log.propagate = False
        self.broker = Broker(SqliteStore(data_dir))
        self.broker.start()
        users = UserStore(data_dir)
        self.app = build_app(self.broker, users, max_body_bytes=64 << 20, face="cli")
        self.token = users.control_token()

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Any:
        raw_path, _, query = path.partition("?")
        sent = [{"type": "http.request", "more_body": False,
                 "body": b"" if body is None else json.dumps(body).encode()}]
        status, chunks = 500, []

        async def receive() -> dict[str, Any]:
            return sent.pop() if sent else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": unquote(raw_path),
                 "raw_path": raw_path.encode(), "query_string": query.encode(),
                 "root_path": "", "client": ("127.0.0.1", 0), "server": ("localhost", 0),
                 "headers": [(b"authorization", f"Bearer {self.token}".encode()),
                             (b"content-type", b"application/json"), (b"host", b"localhost"),
                             *[(k.lower().encode(), v.encode())
                               for k, v in (headers or {}).items()]]}
        await self.app(scope, receive, send)
        raw = b"".join(chunks)
        if status >= 400:
            raise _refusal(status, raw)
        return json.loads(raw or b"null")

    async def close(self) -> None:
        try:
            await self.broker.sync()
        finally:
            self.broker.close()


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


async def delete_vhost(data_dir: str, name: str) -> int:
    """``tidings vhosts delete``: the vhost and everything in it (queues and messages,
    exchanges, policies, machine instances), on the running server or here."""
    remote = find_server(data_dir)
    api: Api = remote if remote is not None else InProcess(data_dir)
    try:
        await api.call("DELETE", f"/api/vhosts/{_q(name)}")
    finally:
        if isinstance(api, InProcess):
            await api.close()
    return 0


def _q(name: str) -> str:
    return quote(name, safe="")


# -- running a command ---------------------------------------------------------------------------


async def run_control_command(args: argparse.Namespace) -> int:
    if args.command == "machines" and args.name == "graph":  # the definition only
        return _graph(args.key, args.svg)
    remote = find_server(args.data_dir)
    if remote is None and args.command in LIVE_ONLY:
        if args.command in ("status", "ping"):
            print(f"no server is running on {args.data_dir}", file=sys.stderr)
            return 1
        raise BrokenResourceError(
            f"no server is running on {args.data_dir}: {args.command} are listed from a "
            f"running 'tidings serve --data-dir {args.data_dir}'")
    if remote is not None:
        return await _command(remote, args)
    local = InProcess(args.data_dir)
    try:
        return await _command(local, args)
    finally:
        await local.close()


#: Columns of each listing: (title, key path in the API's rows).
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "exchanges": [("vhost", "vhost"), ("name", "name"), ("type", "type"),
                  ("durable", "durable"), ("auto_delete", "auto_delete"),
                  ("internal", "internal"), ("policy", "policy")],
    "bindings": [("vhost", "vhost"), ("source", "source"), ("destination", "destination"),
                 ("destination_type", "destination_type"), ("routing_key", "routing_key")],
    "connections": [("name", "name"), ("user", "user"), ("vhost", "vhost"),
                    ("connection_name", "client_properties.connection_name"),
                    ("client", "client"), ("channels", "channels"), ("state", "state")],
    "channels": [("name", "name"), ("user", "user"), ("vhost", "vhost"),
                 ("consumers", "consumer_count"), ("prefetch", "prefetch_count"),
                 ("unacked", "messages_unacknowledged")],
    "consumers": [("vhost", "queue.vhost"), ("queue", "queue.name"), ("tag", "consumer_tag"),
                  ("channel", "channel_details.name"), ("ack", "ack_required"),
                  ("prefetch", "prefetch_count")],
    "policies": [("vhost", "vhost"), ("name", "name"), ("pattern", "pattern"),
                 ("apply-to", "apply-to"), ("priority", "priority"),
                 ("definition", "definition")],
    "get": [("routing_key", "routing_key"), ("redelivered", "redelivered"),
            ("left", "message_count"), ("payload", "payload")],
}


def _cell(row: dict[str, Any], path: str) -> str:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Aligned columns with a header line (for people; ``--json`` is for scripts)."""
    cells = [[_cell(row, path)[:80] for _, path in columns] for row in rows]
    widths = [max([len(title), *(len(r[i]) for r in cells)]) for i, (title, _) in
              enumerate(columns)]
    for line in [[title for title, _ in columns], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def print_queues(queues: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(queues, indent=2))
        return
    print_table([{**q, "oldest_s": "" if q["oldest_ready_age_s"] is None else
                  f"{q['oldest_ready_age_s']:.1f}"} for q in queues],
                [("vhost", "vhost"), ("queue", "name"),
                 *[(k, k) for k in ("ready", "unacked", "delayed", "consumers", "oldest_s")]])


def print_streams(streams: list[dict[str, Any]], as_json: bool) -> None:
    """One line per stream, then one per reader."""
    if as_json:
        print(json.dumps(streams, indent=2))
        return
    rows = []
    for s in streams:
        kept = [f"{s['max_bytes']} bytes" if s["max_bytes"] is not None else "",
                f"{s['max_age_s']:g} s" if s["max_age_s"] is not None else ""]
        rows.append({**s, "retention": ", ".join(k for k in kept if k) or "none"})
        rows += [{"name": f"  {'consumer' if r['live'] else 'reader'} {r['name']}",
                  "records": f"at {r['offset']}",
                  "retention": f"{r['lag']} behind ({r['lag_s']:.1f} s)"}
                 for r in s["readers"]]
    print_table(rows, [("vhost", "vhost"), ("stream", "name"), ("records", "records"),
                       ("bytes", "bytes"), ("first", "first_offset"), ("last", "last_offset"),
                       ("retention", "retention")])


def _key_values(items: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in items)
    for key, value in items:
        print(f"{key.ljust(width)}  {value}")


def _args_table(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"'{pair}' is not KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _said(args: argparse.Namespace, result: Any, line: str) -> int:
    """An action's answer: one line for people, the API's JSON with ``--json``."""
    print(json.dumps(result) if getattr(args, "json", False) else line)
    return 0


def _vhost_of(args: argparse.Namespace) -> tuple[str, str]:
    vhost = getattr(args, "vhost", None) or "/"
    return vhost, _q(vhost)


async def _listing(api: Api, args: argparse.Namespace) -> int:
    c, as_json = args.command, args.json
    rows = await api.call("GET", f"/api/{c}")
    if c == "queues":
        streams = {(s["vhost"], s["name"]) for s in await api.call("GET", "/api/streams")}
        print_queues([q for q in rows if (q["vhost"], q["name"]) not in streams], as_json)
    elif c == "streams":
        print_streams(rows, as_json)
    elif as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, COLUMNS[c])
    return 0


async def _declare(api: Api, args: argparse.Namespace) -> int:
    vhost, v = _vhost_of(args)
    if args.kind == "binding":
        return await _binding(api, args)
    if args.kind == "queue":
        arguments = _args_table(args.arg)
        if args.type != "classic":
            arguments["x-queue-type"] = args.type
        result = await api.call("PUT", f"/api/queues/{v}/{_q(args.name)}", {
            "durable": not args.transient, "auto_delete": args.auto_delete,
            "arguments": arguments})
        return _said(args, result, f"queue '{args.name}' declared in vhost '{vhost}'")
    result = await api.call("PUT", f"/api/exchanges/{v}/{_q(args.name)}", {
        "type": args.type, "durable": not args.transient, "auto_delete": args.auto_delete,
        "internal": args.internal, "arguments": _args_table(args.arg)})
    return _said(args, result, f"exchange '{args.name}' ({args.type}) declared in vhost "
                               f"'{vhost}'")


async def _binding(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    declare = args.command == "declare"
    result = await api.call("POST" if declare else "DELETE", f"/api/bindings/{v}", {
        "source": args.source, "destination": args.destination,
        "destination_type": "exchange" if args.to_exchange else "queue",
        "routing_key": args.routing_key})
    return _said(args, result, f"{'bound' if declare else 'unbound'} '{args.source}' -> "
                               f"'{args.destination}' ({args.routing_key or 'no key'})")


async def _delete(api: Api, args: argparse.Namespace) -> int:
    if args.kind == "binding":
        return await _binding(api, args)
    _, v = _vhost_of(args)
    flags = [f"{flag}=true" for flag, on in (
        ("if_empty", getattr(args, "if_empty", False)), ("if_unused", args.if_unused)) if on]
    kind = "queues" if args.kind == "queue" else "exchanges"
    query = f"?{'&'.join(flags)}" if flags else ""
    result = await api.call("DELETE", f"/api/{kind}/{v}/{_q(args.name)}{query}")
    extra = f" with {result['messages']} message(s)" if isinstance(result, dict) and \
        "messages" in result else ""
    return _said(args, result, f"{args.kind} '{args.name}' deleted{extra}")


async def _purge(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    result = await api.call("DELETE", f"/api/queues/{v}/{_q(args.queue)}/contents")
    return _said(args, result, f"purged {result['purged']} message(s) from '{args.queue}'")


async def _publish(api: Api, args: argparse.Namespace) -> int:
    vhost, v = _vhost_of(args)
    exchange = args.exchange or "amq.default"
    result = await api.call("POST", f"/api/exchanges/{v}/{_q(exchange)}/publish", {
        "routing_key": args.routing_key, "payload": args.body, "payload_encoding": "string",
        "properties": {"content_type": args.content_type, "delivery_mode": 2,
                       "headers": _args_table(args.header)}})
    if not result.get("routed"):
        if not args.exchange:
            raise NotFoundError(f"no queue '{args.routing_key}' in vhost '{vhost}'")
        raise ConfigError(f"published to exchange '{args.exchange}' but routed to no queue "
                          f"(routing key '{args.routing_key}')")
    return _said(args, result, "published")


async def _get(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    rows = await api.call("POST", f"/api/queues/{v}/{_q(args.queue)}/get", {
        "count": args.count, "encoding": "auto",
        "ackmode": "ack_requeue_false" if args.ack else "ack_requeue_true"})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"queue '{args.queue}' is empty")
    else:
        print_table(rows, COLUMNS["get"])
    return 0


async def _close(api: Api, args: argparse.Namespace) -> int:
    if not args.connection:
        raise ConfigError("name the connection to close, as 'tidings connections' lists it")
    await api.call("DELETE", f"/api/connections/{_q(args.connection)}",
                   headers={"X-Reason": args.reason})
    return _said(args, {"closed": args.connection}, f"closed '{args.connection}'")


async def _ping(api: Api, args: argparse.Namespace) -> int:
    return _said(args, await api.call("GET", "/api/healthchecks/node"), "pong")


async def _stats(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    path = f"/api/queues/{v}/{_q(args.queue)}" if args.queue else "/api/overview"
    print(json.dumps(await api.call("GET", path), indent=2))
    return 0


async def _dead_letters(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    path = f"/api/queues/{v}/{_q(args.queue)}/dead-letters"
    if args.replay:
        result = await api.call("POST", f"{path}/replay", {})
        return _said(args, result, f"replayed {result['replayed']}")
    if args.purge:
        result = await api.call("DELETE", path)
        return _said(args, result, f"purged {result['purged']}")
    rows = await api.call("GET", f"{path}?limit=1000")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for m in rows:
        death = ((m.get("headers") or {}).get("x-death") or [{}])[0]
        print(f"{m.get('message_id')}\t{death.get('reason', '?')}\t{str(m.get('body'))[:60]!r}")
    return 0


def _graph(spec: str | None, as_svg: bool) -> int:
    """``tidings machines graph MODULE:MACHINE``: its diagram, from its definition."""
    from tidings.cli_worker import load_object
    from tidings.client.machine import Machine
    from tidings.machine_diagram import svg

    if spec is None:
        raise ConfigError("tidings machines graph needs MODULE:MACHINE (e.g. app.orders:machine)")
    machine = load_object(spec, Machine, "a tidings Machine", "app.orders:machine")
    print(svg(machine.describe()) if as_svg else machine.mermaid(), end="")
    return 0


async def _machines(api: Api, args: argparse.Namespace) -> int:
    _, v = _vhost_of(args)
    if args.move_to is not None:
        if args.key is None or not args.reason:
            raise ConfigError("--move-to needs a machine, an instance key and --reason")
        moved = await api.call("POST", f"/api/machines/{v}/{_q(args.name)}/{_q(args.key)}/move",
                               {"state": args.move_to, "reason": args.reason})
        return _said(args, moved, f"'{args.key}' moved to '{args.move_to}' (version "
                                  f"{moved['version']})")
    if args.key is not None:
        found = await api.call("GET", f"/api/machines/{v}/{_q(args.name)}/{_q(args.key)}")
        print(json.dumps(found, indent=2))
        return 0
    if args.name is None:
        rows = await api.call("GET", "/api/machines")
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows, [("vhost", "vhost"), ("machine", "name"),
                               ("instances", "instances"), ("states", "states")])
        return 0
    query = f"?page_size=500&state={quote(args.state)}" if args.state else "?page_size=500"
    found = await api.call("GET", f"/api/machines/{v}/{_q(args.name)}{query}")
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print_table(found["items"], [(k, k) for k in ("key", "state", "version", "history")])
    return 0


async def _command(api: Api, args: argparse.Namespace) -> int:
    handlers = {"machines": _machines, "declare": _declare, "delete": _delete,
                "purge": _purge, "publish": _publish, "get": _get, "close": _close,
                "ping": _ping, "status": _status,
                "policies": _policies, "stats": _stats, "dead-letters": _dead_letters,
                "definitions": _definitions}
    return await handlers.get(args.command, _listing)(api, args)


async def _status(api: Api, args: argparse.Namespace) -> int:
    as_json = args.json
    overview = await api.call("GET", "/api/overview")
    [node] = await api.call("GET", "/api/nodes")
    if as_json:
        print(json.dumps({"overview": overview, "node": node}, indent=2))
        return 0
    totals, objects = overview.get("queue_totals", {}), overview.get("object_totals", {})
    _key_values([
        ("node", node["name"]), ("version", f"tidings {overview['product_version']} "
                                            f"(RabbitMQ API {overview['rabbitmq_version']})"),
        ("pid", node["os_pid"]), ("uptime", f"{node['uptime'] / 1000:.0f} s"),
        ("memory", f"{node['mem_used'] / 2**20:.1f} MiB resident"),
        ("descriptors", f"{node['fd_used']} of {node['fd_total']} "
                        f"({node['sockets_used']} sockets)"),
        ("disk free", f"{node['disk_free'] / 2**30:.1f} GiB (limit "
                      f"{node['disk_free_limit'] / 2**20:.0f} MiB)"),
        ("alarms", ", ".join(name for name, key in (("memory", "mem_alarm"),
                                                    ("disk", "disk_free_alarm")) if node[key])
         or "none"),
        ("connections", objects.get("connections", 0)),
        ("channels", objects.get("channels", 0)), ("queues", objects.get("queues", 0)),
        ("consumers", objects.get("consumers", 0)),
        ("messages", f"{totals.get('messages_ready', 0)} ready, "
                     f"{totals.get('messages_unacknowledged', 0)} unacknowledged"),
    ])
    return 0


async def _policies(api: Api, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    base = "/api/operator-policies" if getattr(args, "operator", False) else "/api/policies"
    action = args.action or "list"
    if action == "list":
        path = f"{base}/{_q(args.vhost)}" if getattr(args, "vhost", None) else base
        rows = await api.call("GET", path)
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows, COLUMNS["policies"])
        return 0
    path = f"{base}/{_q(args.vhost)}/{_q(args.name)}"
    if action == "delete":
        await api.call("DELETE", path)
        print(json.dumps({"deleted": args.name}) if as_json else
              f"policy '{args.name}' deleted")
        return 0
    try:
        definition = json.loads(args.definition)
    except ValueError as e:
        raise ConfigError(f"definition is not JSON: {e}") from None
    result = await api.call("PUT", path, {"pattern": args.pattern, "definition": definition,
                                          "priority": args.priority,
                                          "apply-to": args.apply_to})
    if as_json:
        print(json.dumps(result or {"set": args.name}))
        return 0
    print(f"policy '{args.name}' set in vhost '{args.vhost}'")
    for warning in (result or {}).get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


async def _definitions(api: Api, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    if args.action == "export":
        text = json.dumps(await api.call("GET", "/api/definitions"), indent=2)
        if args.file == "-":
            print(text)
        else:
            Path(args.file).write_text(text + "\n")
        return 0
    report = await api.call("POST", "/api/definitions", _read_definitions(args.file))
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    done = ", ".join(f"{n} {section}" for section, n in report["imported"].items() if n)
    print(f"imported: {done or 'nothing'}")
    for line in report.get("skipped", []):
        print(f"skipped: {line}")
    return 0


def _read_definitions(file: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read definitions from '{file}': {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"'{file}' is not a definitions object")
    return data
