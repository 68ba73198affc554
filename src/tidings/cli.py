"""The ``tidings`` command: the composition root (config → store → broker → servers).

``tidings serve`` runs the broker with its AMQP listener; ``users`` and ``vhosts`` edit the
users file (a running server rereads it); ``queues``, ``stats``, ``dead-letters`` and
``quarantine`` inspect a data directory that no process holds. Bad flags give one line and
exit code 2; errors at run time give one line and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import tidings
from tidings.cli_control import COMMANDS, add_control_parsers, find_server, run_control_command
from tidings.cli_serve import add_serve_parser, kafka_flag_problem, loop_factory, serve
from tidings.cli_users import add_users_parsers, run_users_command
from tidings.cli_worker import add_worker_parser, run_worker
from tidings.errors import NotFoundError, ResourceLockedError, TidingsError
from tidings.shared import open_directory

#: Where the embedded broker keeps its data unless told otherwise.
DEFAULT_DATA_DIR = "./tidings-data"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command: one-line errors with exit code 2, defaults shown in its help, and
    ``--data-dir`` accepted before or after the command (``tidings serve --data-dir DIR``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--data-dir", default=argparse.SUPPRESS,
                          help="data directory of the broker (env TIDINGS_DATA_DIR; default "
                               f"{DEFAULT_DATA_DIR})")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    """A TCP port for a flag (0: any free one; -1 where a flag documents it as off)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not -1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tidings", description="A message queue and event bus for Python.")
    parser.set_defaults(data_dir=os.environ.get("TIDINGS_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--version", action="version", version=f"tidings {tidings.__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_serve_parser(commands, _port)
    add_worker_parser(commands)
    add_users_parsers(commands)
    queues = commands.add_parser("queues", help="list queues with their depth and consumers "
                                                "(streams: 'tidings streams')")
    queues.add_argument("--json", action="store_true", help="one JSON array, every number")
    streams = commands.add_parser(
        "streams", help="list streams: records, size, offsets, retention, readers' lag")
    streams.add_argument("--json", action="store_true", help="one JSON array, every number")
    stats = commands.add_parser("stats", help="broker statistics as JSON")
    stats.add_argument("--queue", help="only this queue")
    dead = commands.add_parser("dead-letters", help="list, replay or purge a queue's dead letters")
    dead.add_argument("queue")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true", help="move them back into the queue")
    action.add_argument("--purge", action="store_true", help="delete them")
    add_control_parsers(commands)
    quarantine = commands.add_parser(
        "quarantine", help="list stored records that could not be read (moved aside on start)")
    quarantine.add_argument("--export", metavar="DIR",
                            help="write each record's bytes and an index.json into DIR")
    quarantine.add_argument("--drop", action="store_true",
                            help="delete them from the data directory (after --export, say)")
    return parser


def _quarantine(args: argparse.Namespace) -> int:
    """From the running server's API when one holds the directory, else from the store
    itself (no broker is started, so nothing is recovered or moved)."""
    from tidings.storage import SqliteStore, quarantine
    from tidings.storage.quarantine import QuarantinedRecord

    remote = find_server(args.data_dir)
    if remote is not None:
        if args.drop:
            raise tidings.ConfigError("--drop needs the server stopped (it edits the directory)")
        found = [QuarantinedRecord(r["id"], f"{r['vhost']}\x1f{r['queue']}", r["seq"],
                                   r["reason"], r["quarantined_at"],
                                   base64.b64decode(r["data_base64"]))
                 for r in remote.call("GET", "/api/quarantine")]
        _show_quarantine(args, found)
        return 0
    store = SqliteStore(args.data_dir)
    try:
        found = quarantine.records(store)
        _show_quarantine(args, found)
        if args.drop:
            for r in found:
                quarantine.drop(store, r.id)
            print(f"dropped {len(found)} record(s)")
    finally:
        store.close()
    return 0


def _show_quarantine(args: argparse.Namespace, found: list[Any]) -> None:
    if args.export:
        out = Path(args.export)
        out.mkdir(parents=True, exist_ok=True)
        index = []
        for r in found:
            name = f"{r.seq}.record"
            (out / name).write_bytes(r.data)
            index.append({"file": name, "vhost": r.vhost, "queue": r.queue, "seq": r.seq,
                          "reason": r.reason, "quarantined_at": r.quarantined_at})
        (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        print(f"exported {len(found)} record(s) to {out}")
        return
    print(f"{'seq':>12}  {'vhost':<10}{'queue':<30}{'bytes':>10}  reason")
    for r in found:
        print(f"{r.seq:>12}  {r.vhost:<10}{r.queue:<30}{len(r.data):>10}  {r.reason}")


async def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return await serve(args)
    if args.command in ("users", "vhosts", "tokens"):
        return run_users_command(args)
    creates = args.command == "definitions" and args.action == "import"
    if not os.path.isdir(args.data_dir) and not creates:
        raise tidings.ConfigError(f"no data directory '{args.data_dir}' (see --data-dir)")
    if args.command == "quarantine":
        return _quarantine(args)
    if args.command in COMMANDS:
        return await run_control_command(args)
    remote = find_server(args.data_dir)
    if args.command == "queues" and remote is not None:
        streams = {(s["vhost"], s["name"]) for s in remote.call("GET", "/api/streams")}
        _print_queues([q for q in remote.call("GET", "/api/queues")
                       if (q["vhost"], q["name"]) not in streams], args.json)
        return 0
    if args.command == "streams" and remote is not None:
        _print_streams(remote.call("GET", "/api/streams"), args.json)
        return 0
    try:  # the directory itself, not its owner's view through the socket (which knows less)
        client = await tidings.Client(
            args.data_dir, transport_factory=lambda: open_directory(Path(args.data_dir))).open()
    except ResourceLockedError as e:
        raise ResourceLockedError(f"{e}; if it is a running 'tidings serve', ask its HTTP "
                                  f"API instead (GET /api/queues, /api/overview)") from e
    async with client:
        if args.command == "queues":
            stats = await client.statistics()
            streams = {(s.vhost, s.name) for s in stats.streams}
            _print_queues([asdict(q) for q in stats.queues
                           if (q.vhost, q.name) not in streams], args.json)
        elif args.command == "streams":
            stats = await client.statistics()
            _print_streams([asdict(s) for s in stats.streams], args.json)
        elif args.command == "stats":
            stats = await client.statistics()
            data: Any = asdict(stats.queue(args.queue)) if args.queue else asdict(stats)
            print(json.dumps(data, indent=2))
        elif args.command == "dead-letters":
            names = {q.name for q in (await client.statistics()).queues if q.vhost == "/"}
            if args.queue not in names:
                raise NotFoundError(f"no queue '{args.queue}' in vhost '/'")
            if args.replay:
                print(f"replayed {await client.replay_dead_letters(args.queue)}")
            elif args.purge:
                print(f"purged {await client.purge_dead_letters(args.queue)}")
            else:
                for m in await client.dead_letters(args.queue, limit=1000):
                    death = ((m.headers or {}).get("x-death") or [{}])[0]
                    print(f"{m.message_id}\t{death.get('reason', '?')}\t{m.body[:60]!r}")
    return 0


def _print_queues(queues: list[dict[str, Any]], as_json: bool) -> None:
    """One line per queue (the same from a running server's API or the data directory)."""
    if as_json:
        print(json.dumps(queues, indent=2))
        return
    print(f"{'vhost':<12}{'queue':<40}{'ready':>10}{'unacked':>10}{'delayed':>10}"
          f"{'consumers':>10}{'oldest_s':>10}")
    for q in queues:
        age = q["oldest_ready_age_s"]
        shown = "" if age is None else f"{age:.1f}"
        print(f"{q['vhost']:<12}{q['name']:<40}{q['ready']:>10}{q['unacked']:>10}"
              f"{q['delayed']:>10}{q['consumers']:>10}{shown:>10}")


def _print_streams(streams: list[dict[str, Any]], as_json: bool) -> None:
    """One line per stream, then one per reader (from a running server or the directory)."""
    if as_json:
        print(json.dumps(streams, indent=2))
        return
    print(f"{'vhost':<12}{'stream':<32}{'records':>10}{'bytes':>14}{'first':>10}{'last':>10}"
          f"  retention")
    for s in streams:
        kept = [f"{s['max_bytes']} bytes" if s["max_bytes"] is not None else "",
                f"{s['max_age_s']:g} s" if s["max_age_s"] is not None else ""]
        shown = ", ".join(k for k in kept if k) or "none"
        first = "" if s["first_offset"] is None else s["first_offset"]
        last = "" if s["last_offset"] is None else s["last_offset"]
        print(f"{s['vhost']:<12}{s['name']:<32}{s['records']:>10}{s['bytes']:>14}{first:>10}"
              f"{last:>10}  {shown}")
        for r in s["readers"]:
            kind = "consumer" if r["live"] else "reader"
            print(f"{'':<12}  {kind} {r['name']}: at {r['offset']}, {r['lag']} behind "
                  f"({r['lag_s']:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `tidings`
        parser.print_help()
        return 0
    if args.command == "worker":
        try:
            return run_worker(args)
        except TidingsError as e:  # an app that cannot be loaded or shared: a usage error
            print(f"tidings worker: error: {e}", file=sys.stderr)
            return 2
    if args.command == "serve" and (problem := kafka_flag_problem(args)) is not None:
        parser.error(problem)
    try:
        factory = loop_factory(args.loop) if args.command == "serve" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tidings stats | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyError as e:
        print(f"tidings: error: no queue {e}", file=sys.stderr)
    except TidingsError as e:
        print(f"tidings: error: {e}", file=sys.stderr)
    except OSError as e:  # a data directory that is a file, read-only, on a full disk, ...
        where = f" '{e.filename}'" if e.filename else ""
        print(f"tidings: error: {e.strerror or e}{where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
